import AMQPClient
import Foundation
import TestSupport
import Testing
import TutorCruncherConsumer

/// Retries, dead-lettering and prefetch, against the real broker.
@Suite struct ConsumerFailureTests {
    @Test func throwingHandlerIsRetriedThenDeadLetteredWithTheError() async throws {
        let exchange = uniqueExchange()
        var configuration = consumerConfiguration(exchange: exchange, actions: [.raisedInvoice])
        configuration.retryPolicy = .init(maxAttempts: 3)
        let attempts = Recorder<String>()
        let processor = TutorCruncherEventProcessor(configuration: configuration, logger: quietLogger) { event in
            attempts.append(event.eventID)
            throw HandlerFailure(attempt: attempts.count)
        }
        try await withServices([processor]) {
            try await waitUntil("consumer connected") { processor.consumer.isConnected }
            let deadLetters = try await QueueProbe(existingQueue: configuration.deadLetterQueue)
            defer { Task { await deadLetters.stop() } }
            let envelopes = try await publishWebhookBodies(exchange: exchange, bodies: [Webhooks.body(actions: ["RAISED_INVOICE"])])
            let dead = try #require(try await deadLetters.waitForMessages(count: 1).first)
            #expect(attempts.all == Array(repeating: envelopes[0].eventID, count: 3))
            #expect(dead.body == envelopes[0].body)
            #expect(dead.properties.messageID == envelopes[0].eventID)
            #expect(dead.properties.header(ConsumerHeader.attempt) == .int(3))
            #expect(dead.properties.header(ConsumerHeader.originalRoutingKey) == .string("RAISED_INVOICE"))
            #expect(dead.properties.header(ConsumerHeader.originalQueue) == .string(configuration.queue))
            guard case .string(let error)? = dead.properties.header(ConsumerHeader.error) else {
                Issue.record("no tc-error header")
                return
            }
            #expect(error.contains("failed 3 times"))
            #expect(error.contains("billing system said no (attempt 3)"))
            let admin = AMQPAdmin(connection: RabbitMQNode.shared.connection)
            #expect(try await admin.messageCount(queue: configuration.queue) == 0)
        }
    }

    @Test func undecodableMessageIsDeadLetteredAtOnceAndConsumptionContinues() async throws {
        let exchange = uniqueExchange()
        let configuration = consumerConfiguration(exchange: exchange, actions: [.raisedInvoice])
        let handled = Recorder<String>()
        let processor = TutorCruncherEventProcessor(configuration: configuration, logger: quietLogger) { handled.append($0.eventID) }
        try await withServices([processor]) {
            try await waitUntil("consumer connected") { processor.consumer.isConnected }
            let deadLetters = try await QueueProbe(existingQueue: configuration.deadLetterQueue)
            defer { Task { await deadLetters.stop() } }
            try await publishRaw(exchange: exchange, routingKey: "RAISED_INVOICE", body: Array("{not json".utf8))
            try await publishRaw(exchange: exchange, routingKey: "RAISED_INVOICE", body: Array(#"{"action": "RAISED_INVOICE"}"#.utf8))
            let good = try await publishWebhookBodies(exchange: exchange, bodies: [Webhooks.body(actions: ["RAISED_INVOICE"])])
            let dead = try await deadLetters.waitForMessages(count: 2)
            #expect(dead.map(\.body) == [Array("{not json".utf8), Array(#"{"action": "RAISED_INVOICE"}"#.utf8)])
            for message in dead {
                guard case .string(let error)? = message.properties.header(ConsumerHeader.error) else {
                    Issue.record("no tc-error header")
                    continue
                }
                #expect(error.hasPrefix("undecodable"))
            }
            try await waitUntil("good event handled") { handled.all == [good[0].eventID] }
        }
    }

    @Test func brokerHonoursPrefetchForTheSequenceAPI() async throws {
        let exchange = uniqueExchange()
        let configuration = consumerConfiguration(exchange: exchange, prefetch: 3)
        let consumer = TutorCruncherConsumer(configuration: configuration, logger: quietLogger)
        let admin = AMQPAdmin(connection: RabbitMQNode.shared.connection)
        let received = Recorder<TutorCruncherDelivery>()
        try await withServices([consumer]) {
            try await waitUntil("consumer connected") { consumer.isConnected }
            let reader = Task {
                for await delivery in consumer.deliveries { received.append(delivery) }
            }
            defer { reader.cancel() }
            let bodies = (0..<10).map { Webhooks.body(actions: ["LOGIN"], subjectID: $0) }
            _ = try await publishWebhookBodies(exchange: exchange, bodies: bodies)
            // Held unacknowledged: the broker stops at 3 and keeps 7 ready.
            try await waitUntil("3 in flight, 7 ready") {
                let ready = try await admin.messageCount(queue: configuration.queue)
                return received.count == 3 && ready == 7
            }
            #expect(received.count == 3)
            // Acknowledging frees slots until all 10 are through.
            var acknowledged = 0
            while acknowledged < 10 {
                try await waitUntil("next delivery") { received.count > acknowledged }
                try await received.all[acknowledged].ack()
                acknowledged += 1
            }
            #expect(received.count == 10)
            #expect(Set(received.all.map(\.event.eventID)).count == 10)
        }
    }

    @Test func handlerConcurrencyNeverExceedsPrefetch() async throws {
        let exchange = uniqueExchange()
        let configuration = consumerConfiguration(exchange: exchange, prefetch: 4)
        let meter = ConcurrencyMeter()
        let gate = Gate()
        let handled = Recorder<String>()
        let processor = TutorCruncherEventProcessor(configuration: configuration, logger: quietLogger) { event in
            meter.enter()
            await gate.wait()
            handled.append(event.eventID)
            meter.leave()
        }
        let admin = AMQPAdmin(connection: RabbitMQNode.shared.connection)
        try await withServices([processor]) {
            try await waitUntil("consumer connected") { processor.consumer.isConnected }
            _ = try await publishWebhookBodies(exchange: exchange, bodies: (0..<10).map { Webhooks.body(actions: ["LOGIN"], subjectID: $0) })
            try await waitUntil("4 handlers running, 6 ready") {
                let ready = try await admin.messageCount(queue: configuration.queue)
                return meter.current == 4 && ready == 6
            }
            gate.open()
            try await waitUntil("all handled") { handled.count == 10 }
        }
        #expect(meter.peak == 4)
    }
}
