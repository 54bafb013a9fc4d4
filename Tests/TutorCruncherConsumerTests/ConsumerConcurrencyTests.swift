import AMQPClient
import Foundation
import Synchronization
import TestSupport
import Testing
import TutorCruncherConsumer

/// Handler concurrency apart from prefetch; one subject's events one at a time, in order; filters.
@Suite struct ConsumerConcurrencyTests {
    @Test func concurrencyLimitsRunningHandlersBelowPrefetch() async throws {
        let exchange = uniqueExchange()
        var configuration = consumerConfiguration(exchange: exchange, prefetch: 10)
        configuration.concurrency = 2
        let handlers = GatedHandlers()
        let processor = TutorCruncherEventProcessor(configuration: configuration, logger: quietLogger, handler: handlers.handler)
        let admin = AMQPAdmin(connection: RabbitMQNode.shared.connection)
        try await withServices([processor]) {
            try await waitUntil("consumer connected") { processor.consumer.isConnected }
            _ = try await publishWebhookBodies(exchange: exchange, bodies: (0..<10).map { Webhooks.body(actions: ["LOGIN"], subjectID: $0) })
            // All ten are with the consumer (prefetch 10), two handlers run.
            try await waitUntil("2 handlers running, none left in the queue") {
                guard handlers.meter.current == 2 else { return false }
                return try await admin.messageCount(queue: configuration.queue) == 0
            }
            try await handlers.openAndWait(untilHandled: 10)
        }
        #expect(handlers.meter.peak == 2)
    }

    @Test func eventsOfOneSubjectAreHandledOneAtATimeInArrivalOrder() async throws {
        let exchange = uniqueExchange()
        var configuration = consumerConfiguration(exchange: exchange, prefetch: 20)
        configuration.orderedBySubject = true
        let perSubject = Mutex<[Int: Int]>([:])  // subject id -> handlers running
        let overlap = Mutex(false)
        let order = Recorder<String>()
        let meter = ConcurrencyMeter()
        let processor = TutorCruncherEventProcessor(configuration: configuration, logger: quietLogger) { event in
            let id = event.subject?.id ?? -1
            perSubject.withLock { running in
                running[id, default: 0] += 1
                if running[id, default: 0] > 1 { overlap.withLock { $0 = true } }
            }
            meter.enter()
            // Later events of a subject would overtake earlier ones if nothing ordered them.
            try await Task.sleep(for: .milliseconds(Int.random(in: 1...20)))
            if id == 7 { order.append(event.eventID) }
            meter.leave()
            perSubject.withLock { $0[id, default: 1] -= 1 }
        }
        try await withServices([processor]) {
            try await waitUntil("consumer connected") { processor.consumer.isConnected }
            // Ten edits of subject 7, interleaved with ten other subjects.
            var bodies: [[UInt8]] = []
            for index in 0..<10 {
                bodies.append(Webhooks.body(actions: ["EDITED_A_CLIENT"], subjectID: 7))
                bodies.append(Webhooks.body(actions: ["EDITED_A_CLIENT"], subjectID: 100 + index))
            }
            let envelopes = try await publishWebhookBodies(exchange: exchange, bodies: bodies)
            let expected = envelopes.enumerated().filter { $0.offset.isMultiple(of: 2) }.map(\.element.eventID)
            try await waitUntil("subject 7 handled ten times") { order.count == 10 }
            #expect(order.all == expected, "in arrival order")
        }
        #expect(!overlap.withLock { $0 }, "two handlers of one subject ran at once")
        #expect(meter.peak > 1, "different subjects still ran concurrently")
    }

    @Test func branchAndSubjectModelFiltersSkipTheRest() async throws {
        let exchange = uniqueExchange()
        var configuration = consumerConfiguration(exchange: exchange)
        configuration.branches = [590]
        configuration.subjectModels = ["Client"]
        let handled = Recorder<String>()
        let processor = TutorCruncherEventProcessor(configuration: configuration, logger: quietLogger) { handled.append($0.eventID) }
        let admin = AMQPAdmin(connection: RabbitMQNode.shared.connection)
        try await withServices([processor]) {
            try await waitUntil("consumer connected") { processor.consumer.isConnected }
            let otherBranch = Array(String(decoding: Webhooks.body(actions: ["LOGIN"]), as: UTF8.self).replacingOccurrences(of: "\"branch\": 590", with: "\"branch\": 12").utf8)
            let otherModel = Array(String(decoding: Webhooks.body(actions: ["LOGIN"]), as: UTF8.self).replacingOccurrences(of: "\"model\": \"Client\"", with: "\"model\": \"Tutor\"").utf8)
            let kept = Webhooks.body(actions: ["LOGIN"])
            let envelopes = try await publishWebhookBodies(exchange: exchange, bodies: [otherBranch, otherModel, kept])
            try await waitUntil("the matching event handled") { handled.all == [envelopes[2].eventID] }
        }
        #expect(handled.all.count == 1)
        #expect(try await messagesLeft(in: configuration.queue) == 0, "the filtered events were not acknowledged")
        #expect(try await admin.messageCount(queue: configuration.deadLetterQueue) == 0)
    }

    @Test func queueOptionsAreDeclaredOnTheQueue() async throws {
        var configuration = consumerConfiguration(exchange: uniqueExchange())
        configuration.queueOptions = .init(messageTTL: .seconds(3600), maxLength: 5000, overflow: .rejectPublish, singleActiveConsumer: true)
        let processor = TutorCruncherEventProcessor(configuration: configuration, logger: quietLogger) { _ in }
        try await withServices([processor]) {
            try await waitUntil("consumer connected") { processor.consumer.isConnected }
            let listing = try await RabbitMQNode.shared.ctl("list_queues", "name", "arguments", "--no-table-headers")
            let line = try #require(listing.split(separator: "\n").first { $0.hasPrefix(configuration.queue + "\t") }, "\(listing)")
            for expected in ["x-message-ttl", "3600000", "x-max-length", "5000", "reject-publish", "x-single-active-consumer"] {
                #expect(line.contains(expected), "\(line)")
            }
        }
    }

    /// Events waiting for a handler slot when the connection breaks are not handled: their acks could
    /// only fail, and the broker delivers them again on the next connection, where they are handled
    /// once each. (Handled anyway, each ran twice after every reconnect.)
    @Test func eventsWaitingForASlotWhenTheConnectionBreaksAreHandledOnlyAfterTheirRedelivery() async throws {
        let exchange = uniqueExchange()
        let name = "stale-\(UUID().uuidString.prefix(8))"
        var configuration = consumerConfiguration(exchange: exchange, prefetch: 10)
        configuration.connection.connectionName = name
        configuration.concurrency = 1
        let gate = Gate()
        let runs = Recorder<(eventID: String, redelivered: Bool)>()
        let processor = TutorCruncherEventProcessor(configuration: configuration, logger: quietLogger) { event, context in
            runs.append((event.eventID, context.redelivered))
            if runs.count == 1 { await gate.wait() }  // the only slot stays taken until the connection broke
        }
        let admin = AMQPAdmin(connection: RabbitMQNode.shared.connection)
        let published = try await withServices([processor]) {
            try await waitUntil("consumer connected") { processor.consumer.isConnected }
            let envelopes = try await publishWebhookBodies(exchange: exchange, bodies: (0..<5).map { Webhooks.body(actions: ["LOGIN"], subjectID: $0) })
            // One handler runs; the other four are with the consumer, waiting for its slot.
            try await waitUntil("one handler running, none left in the queue") {
                guard runs.count == 1 else { return false }
                return try await admin.messageCount(queue: configuration.queue) == 0
            }
            let broken = try await connectionPIDs(named: name)
            try #require(broken.count == 1)
            try await RabbitMQNode.shared.ctl("close_connection", broken[0], "closed by the test")
            try await waitUntil("consumer connected again") {
                let now = try await connectionPIDs(named: name)
                return now.count == 1 && now != broken
            }
            gate.open()
            try await waitUntil(timeout: .seconds(30), "all five handled after their redelivery") {
                Set(runs.all.dropFirst().filter(\.redelivered).map(\.eventID)) == Set(envelopes.map(\.eventID))
            }
            return envelopes
        }
        // The first run (whose ack failed) and one run per redelivered event; none for the four that waited.
        #expect(runs.count == 1 + published.count, "handler runs: \(runs.all)")
        #expect(try await messagesLeft(in: configuration.queue) == 0)
    }

    /// The broker's process ids of the connections named `name`.
    private func connectionPIDs(named name: String) async throws -> [String] {
        let listing = try await RabbitMQNode.shared.ctl("list_connections", "pid", "client_properties", "--no-table-headers", "--quiet")
        return listing.split(separator: "\n").filter { $0.contains("\"\(name)\"") }.compactMap { $0.split(separator: "\t").first.map(String.init) }
    }
}

/// Handlers that each wait at one gate while a meter counts how many run at once; the events they
/// finish are recorded. Thread-safe.
struct GatedHandlers: Sendable {
    let meter = ConcurrencyMeter()
    let gate = Gate()
    let handled = Recorder<String>()

    var handler: TutorCruncherEventProcessor.Handler {
        { [meter, gate, handled] event in
            meter.enter()
            await gate.wait()
            handled.append(event.eventID)
            meter.leave()
        }
    }

    /// Opens the gate and waits until `count` events were handled.
    func openAndWait(untilHandled count: Int) async throws {
        gate.open()
        try await waitUntil("all handled") { handled.count == count }
    }
}
