import AMQPClient
import Foundation
import Logging
import Testing
import TestSupport

/// Runs a publisher for the duration of `body`, then stops it and waits for its thread to finish.
func withPublisher<R>(
    _ configuration: AMQPPublisherConfiguration, _ body: (AMQPPublisher) async throws -> R
) async throws -> R {
    var logger = Logger(label: "test-publisher")
    logger.logLevel = .error
    let publisher = AMQPPublisher(configuration: configuration, logger: logger)
    let runner = Task { try await publisher.run() }
    do {
        let result = try await body(publisher)
        publisher.requestStop()
        try await runner.value
        return result
    } catch {
        publisher.requestStop()
        _ = try? await runner.value
        throw error
    }
}

func message(exchange: String, key: String, body: String, id: String? = nil) -> AMQPOutboundMessage {
    AMQPOutboundMessage(
        exchange: exchange, routingKey: key,
        properties: AMQPProperties(
            contentType: "application/json", messageID: id, type: key, timestamp: 1_700_000_000, appID: "tests",
            headers: [("tc-branch", .int(590)), ("tc-subject-model", .string("Credit Request")), ("flag", .bool(true))]),
        body: Array(body.utf8))
}

@Suite struct AMQPPublisherTests {
    let node = RabbitMQNode.shared

    func exchangeName() -> String { "test-ex-\(UUID().uuidString.prefix(8))" }

    @Test func publishedMessagesArriveWithTheirProperties() async throws {
        let exchange = exchangeName()
        let probe = try await QueueProbe(exchange: exchange)
        defer { Task { await probe.stop() } }
        try await withPublisher(.init(connection: node.connection, exchanges: [.init(name: exchange, mode: .declareIfMissing)])) { publisher in
            try await waitUntil("publisher connected") { publisher.state == .connected }
            try await publisher.publish([message(exchange: exchange, key: "A.B", body: #"{"n":1}"#, id: "id-1")])
        }
        let received = try await probe.waitForMessages(count: 1)
        let first = try #require(received.first)
        #expect(first.routingKey == "A.B")
        #expect(first.body == Array(#"{"n":1}"#.utf8))
        #expect(first.properties.contentType == "application/json")
        #expect(first.properties.persistent)
        #expect(first.properties.messageID == "id-1")
        #expect(first.properties.type == "A.B")
        #expect(first.properties.timestamp == 1_700_000_000)
        #expect(first.properties.appID == "tests")
        #expect(first.properties.header("tc-branch") == .int(590))
        #expect(first.properties.header("tc-subject-model") == .string("Credit Request"))
        #expect(first.properties.header("flag") == .bool(true))
    }

    /// One call: bodies up to the owner's copied-body limit of 64 KiB (empty, small, at the limit,
    /// and ten of 60,000 bytes, more than the 256 KiB after which the owner sends what it has
    /// gathered mid-round) go out in the round's own writes; larger ones (just over the limit,
    /// around the frame size of 131,072 bytes, over several frames) are written by rabbitmq-c in
    /// between. The call goes out twice on one connection. Every byte arrives, in order.
    @Test func messagesOfEverySizeInOneCallArriveWholeAndInOrder() async throws {
        let exchange = exchangeName()
        let probe = try await QueueProbe(exchange: exchange)
        defer { Task { await probe.stop() } }
        let sizes = [0, 1, 131_064, 131_065, 70_000, 5, 300_000, 0, 2, 65_536, 65_537] + Array(repeating: 60_000, count: 10)
        let messages = sizes.enumerated().map { index, size in
            var sent = message(exchange: exchange, key: "size.\(size)", body: "", id: "m-\(index)")
            sent.body = (0..<size).map { UInt8(truncatingIfNeeded: $0 &* 7 &+ index) }
            return sent
        }
        try await withPublisher(.init(connection: node.connection, exchanges: [.init(name: exchange, mode: .declareIfMissing)])) { publisher in
            try await waitUntil("publisher connected") { publisher.state == .connected }
            try await publisher.publish(messages)
            // And again, so that the second round follows the first on the same connection.
            try await publisher.publish(messages.reversed())
        }
        let received = try await probe.waitForMessages(count: 2 * sizes.count)
        #expect(received.count == 2 * sizes.count)
        for (sent, got) in zip(messages + messages.reversed(), received) {
            #expect(got.properties.messageID == sent.properties.messageID)
            #expect(got.routingKey == sent.routingKey)
            #expect(got.body == sent.body, "body of \(sent.properties.messageID ?? "")")
            #expect(got.properties.header("tc-subject-model") == .string("Credit Request"))
        }
    }

    @Test func concurrentPublishersShareTheChannelAndAllAreConfirmed() async throws {
        let exchange = exchangeName()
        let probe = try await QueueProbe(exchange: exchange)
        defer { Task { await probe.stop() } }
        let tasks = 40, perTask = 25
        try await withPublisher(.init(connection: node.connection, exchanges: [.init(name: exchange, mode: .declareIfMissing)])) { publisher in
            try await waitUntil("publisher connected") { publisher.state == .connected }
            try await withThrowingTaskGroup(of: Void.self) { group in
                for task in 0..<tasks {
                    group.addTask {
                        let batch = (0..<perTask).map { message(exchange: exchange, key: "K", body: "\(task)-\($0)") }
                        try await publisher.publish(batch)
                    }
                }
                try await group.waitForAll()
            }
        }
        let received = try await probe.waitForMessages(count: tasks * perTask)
        #expect(Set(received.map { String(decoding: $0.body, as: UTF8.self) }).count == tasks * perTask)
    }

    @Test func emptyPublishSucceedsAtOnce() async throws {
        try await withPublisher(.init(connection: node.connection)) { publisher in
            try await waitUntil("publisher connected") { publisher.state == .connected }
            try await publisher.publish([])
        }
    }

    @Test func unreachableBrokerFailsFastWithNotConnected() async throws {
        var connection = node.connection
        connection.port = 1  // nothing listens there
        try await withPublisher(.init(connection: connection, reconnectBackoff: .init(initial: .milliseconds(10), maximum: .milliseconds(50)))) { publisher in
            try await waitUntil("publisher to report the failure") {
                if case .disconnected = publisher.state { return true }
                return false
            }
            let error = await #expect(throws: AMQPError.self) {
                try await publisher.publish([message(exchange: "", key: "k", body: "x")])
            }
            #expect(error?.kind == .notConnected)
        }
    }

    @Test func brokerNackFailsOnlyThatPublish() async throws {
        // A queue that refuses messages beyond its length makes the broker nack them.
        let exchange = exchangeName()
        let queue = "full-\(UUID().uuidString.prefix(8))"
        let probe = try await QueueProbe(exchange: exchange, bindingKeys: ["ok"])
        defer { Task { await probe.stop() } }
        try await withPublisher(.init(connection: node.connection, exchanges: [.init(name: exchange, mode: .declareIfMissing)])) { publisher in
            try await waitUntil("publisher connected") { publisher.state == .connected }
            try await AMQPAdmin(connection: node.connection).declare(queues: [
                AMQPQueueDeclaration(
                    name: queue, arguments: ["x-max-length": .int(0), "x-overflow": .string("reject-publish"), "x-expires": .int(60_000)],
                    bindings: [.init(exchange: exchange, routingKey: "full")])
            ])
            let error = await #expect(throws: AMQPError.self) {
                try await publisher.publish([message(exchange: exchange, key: "full", body: "refused")])
            }
            #expect(error?.kind == .nacked)
            // The channel is still healthy: the next publish is confirmed.
            try await publisher.publish([message(exchange: exchange, key: "ok", body: "accepted")])
        }
        #expect(try await probe.waitForMessages(count: 1).first?.body == Array("accepted".utf8))
    }

    @Test func channelErrorFailsOutstandingConfirmsAndThePublisherRecovers() async throws {
        let exchange = exchangeName()
        let probe = try await QueueProbe(exchange: exchange)
        defer { Task { await probe.stop() } }
        try await withPublisher(
            .init(connection: node.connection, exchanges: [.init(name: exchange, mode: .declareIfMissing)], reconnectBackoff: .init(initial: .milliseconds(10), maximum: .milliseconds(100)))
        ) { publisher in
            try await waitUntil("publisher connected") { publisher.state == .connected }
            // Publishing to an exchange that does not exist makes the broker close the channel.
            let error = await #expect(throws: AMQPError.self) {
                try await publisher.publish([message(exchange: "no-such-exchange-\(UUID())", key: "k", body: "x")])
            }
            #expect(error?.kind == .channelClosed)
            try await waitUntil("publisher reconnected") { publisher.state == .connected }
            try await publisher.publish([message(exchange: exchange, key: "after", body: "recovered")])
        }
        #expect(try await probe.waitForMessages(count: 1).first?.routingKey == "after")
    }

    @Test func publishAfterShutdownIsRefused() async throws {
        var logger = Logger(label: "test")
        logger.logLevel = .error
        let publisher = AMQPPublisher(configuration: .init(connection: node.connection), logger: logger)
        let runner = Task { try await publisher.run() }
        try await waitUntil("publisher connected") { publisher.state == .connected }
        publisher.requestStop()
        try await runner.value
        #expect(publisher.state == .closed)
        let error = await #expect(throws: AMQPError.self) { try await publisher.publish([message(exchange: "", key: "k", body: "x")]) }
        #expect(error?.kind == .shutdown)
    }

    @Test func idleConnectionStaysUpThroughHeartbeats() async throws {
        var connection = node.connection
        connection.heartbeat = .seconds(2)
        let exchange = exchangeName()
        let probe = try await QueueProbe(exchange: exchange)
        defer { Task { await probe.stop() } }
        try await withPublisher(.init(connection: connection, exchanges: [.init(name: exchange, mode: .declareIfMissing)])) { publisher in
            try await waitUntil("publisher connected") { publisher.state == .connected }
            // Idle for three heartbeat intervals (the idle time itself is what is tested): the broker
            // closes connections that miss two.
            try await Task.sleep(for: .seconds(6))
            #expect(publisher.state == .connected)
            try await publisher.publish([message(exchange: exchange, key: "alive", body: "x")])
        }
        try await probe.waitForMessages(count: 1)
    }
}

@Suite struct MandatoryPublishTests {
    @Test func unroutableMandatoryPublishIsReturnedCountedAndStillConfirmed() async throws {
        let exchange = "no-bindings-\(UUID().uuidString.prefix(8))"
        try await withPublisher(.init(connection: RabbitMQNode.shared.connection, exchanges: [.init(name: exchange)])) { publisher in
            try await waitUntil("publisher connected") { publisher.state == .connected }
            var unroutable = message(exchange: exchange, key: "NOWHERE", body: "x")
            unroutable.mandatory = true
            try await publisher.publish([unroutable])
            try await waitUntil("return counted") { publisher.returnedMessageCount == 1 }
            // The channel is still usable after basic.return and its content frames.
            try await publisher.publish([unroutable])
            try await waitUntil("second return counted") { publisher.returnedMessageCount == 2 }
        }
    }

    @Test func existingExchangeWithOtherArgumentsIsUsedAsItIs() async throws {
        let exchange = "older-\(UUID().uuidString.prefix(8))"
        try await AMQPAdmin(connection: RabbitMQNode.shared.connection).declare(exchanges: [.init(name: exchange)])
        let declaration = AMQPExchangeDeclaration(
            name: exchange, arguments: ["alternate-exchange": .string("\(exchange).ae")], mode: .declareOrUseExisting)
        try await withPublisher(.init(connection: RabbitMQNode.shared.connection, exchanges: [declaration])) { publisher in
            try await waitUntil("publisher connected despite the mismatch") { publisher.state == .connected }
            try await publisher.publish([message(exchange: exchange, key: "k", body: "x")])
        }
    }
}

/// Messages rabbitmq-c cannot encode are refused before anything is written; the connection and
/// every other publish are unaffected.
@Suite struct UnencodableMessageTests {
    let node = RabbitMQNode.shared

    @Test(arguments: [
        ("routing key", message(exchange: "", key: String(repeating: "A", count: 256), body: "x")),
        ("header", {
            var oversized = message(exchange: "", key: "k", body: "x")
            oversized.properties.headers.append(("tc-subject-model", .string(String(repeating: "m", count: 140_000))))
            return oversized
        }()),
        ("message id", message(exchange: "", key: "k", body: "x", id: String(repeating: "i", count: 300))),
    ])
    func isRefusedWithoutTouchingTheConnection(what: String, bad: AMQPOutboundMessage) async throws {
        let exchange = "test-ex-\(UUID().uuidString.prefix(8))"
        let probe = try await QueueProbe(exchange: exchange)
        defer { Task { await probe.stop() } }
        var bad = bad
        bad.exchange = exchange
        try await withPublisher(.init(connection: node.connection, exchanges: [.init(name: exchange, mode: .declareIfMissing)])) { publisher in
            try await waitUntil("publisher connected") { publisher.state == .connected }
            let good = message(exchange: exchange, key: "ok", body: "first")
            // In one call with a good message: nothing of the call is sent.
            let error = await #expect(throws: AMQPError.self) { try await publisher.publish([good, bad]) }
            #expect(error?.kind == .unencodable, "\(what)")
            // Concurrent good publishes are confirmed, and the connection never dropped.
            try await publisher.publish([message(exchange: exchange, key: "ok", body: "second")])
            #expect(publisher.state == .connected)
        }
        let received = try await probe.waitForMessages(count: 1)
        #expect(received.map(\.body) == [Array("second".utf8)])
    }

    /// The tools' path (``AMQPAdmin``, rabbitmq-c's own `amqp_basic_publish`) refuses the same
    /// messages before anything is sent: a header name over 255 bytes, which rabbitmq-c would send
    /// cut short, among them.
    @Test(arguments: [
        ("header name", {
            var long = message(exchange: "", key: "k", body: "x")
            long.properties.headers.append((String(repeating: "h", count: 256), .bool(true)))
            return long
        }()),
        ("message id", message(exchange: "", key: "k", body: "x", id: String(repeating: "i", count: 256))),
    ])
    func isRefusedByTheToolsPathToo(what: String, bad: AMQPOutboundMessage) async throws {
        let exchange = "test-ex-\(UUID().uuidString.prefix(8))"
        let probe = try await QueueProbe(exchange: exchange)
        defer { Task { await probe.stop() } }
        var bad = bad
        bad.exchange = exchange
        let admin = AMQPAdmin(connection: node.connection)
        let error = await #expect(throws: AMQPError.self) {
            try await admin.publishConfirmed([message(exchange: exchange, key: "ok", body: "first"), bad])
        }
        #expect(error?.kind == .unencodable, "\(what)")
        try await admin.publishConfirmed([message(exchange: exchange, key: "ok", body: "second")])
        let received = try await probe.waitForMessages(count: 2)
        #expect(received.map(\.body) == [Array("first".utf8), Array("second".utf8)])
    }

    @Test func aLargeBatchIsConfirmedWhateverItsSizeWithAShortDeadline() async throws {
        // 20,000 messages against a 5 s confirm deadline (they take 20-30 s in CI): the deadline
        // measures progress, not the batch (PublisherStateMachineTests proves that without a broker).
        // 1 s failed when a busy broker paused for over a second.
        let exchange = "test-ex-\(UUID().uuidString.prefix(8))"
        let probe = try await QueueProbe(exchange: exchange)
        defer { Task { await probe.stop() } }
        let messages = (0..<20_000).map { message(exchange: exchange, key: "bulk", body: "\($0)", id: "m-\($0)") }
        try await withPublisher(
            .init(connection: node.connection, exchanges: [.init(name: exchange, mode: .declareIfMissing)], confirmTimeout: .seconds(5))
        ) { publisher in
            try await waitUntil("publisher connected") { publisher.state == .connected }
            try await publisher.publish(messages)
        }
        let received = try await probe.waitForMessages(count: 20_000, timeout: .seconds(120))
        #expect(Set(received.compactMap(\.properties.messageID)).count == 20_000)
        #expect(received.count == 20_000)
    }
}

@Suite struct EncodingProblemTests {
    @Test func withinLimitsHasNone() {
        #expect(message(exchange: "ex", key: "CREATED_A_CLIENT", body: "{}", id: "abc-0").encodingProblem() == nil)
    }

    @Test func namesTheProblem() {
        let long = message(exchange: "ex", key: String(repeating: "K", count: 256), body: "{}")
        #expect(long.encodingProblem()?.contains("routing key is 256 bytes") == true)
        var header = message(exchange: "ex", key: "k", body: "{}")
        header.properties.headers = [("h", .string(String(repeating: "v", count: 5000)))]
        #expect(header.encodingProblem()?.contains("frame size is 4096") == true)
        #expect(header.encodingProblem(frameSize: 131_072) == nil)
    }
}

@Suite struct EmptyHeaderValueTests {
    @Test func anEmptyStringHeaderIsPublishedAsIs() async throws {
        let exchange = "test-ex-\(UUID().uuidString.prefix(8))"
        let probe = try await QueueProbe(exchange: exchange)
        defer { Task { await probe.stop() } }
        var empty = message(exchange: exchange, key: "k", body: "x")
        empty.properties.headers.append(("tc-subject-model", .string("")))
        try await withPublisher(.init(connection: RabbitMQNode.shared.connection, exchanges: [.init(name: exchange, mode: .declareIfMissing)])) {
            publisher in
            try await waitUntil("publisher connected") { publisher.state == .connected }
            try await publisher.publish([empty])
        }
        let received = try await probe.waitForMessages(count: 1)
        #expect(received.first?.properties.headers.last.map { $0.1 } == .string(""))
    }
}
