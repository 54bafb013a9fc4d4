import AMQPClient
import Foundation
import Testing
import TestSupport

@testable import TCBridge
import TutorCruncherSignature

/// `tc-bridge spool ...` and `tc-bridge unroutable ...` against a running bridge and a real broker.
@Suite struct OperatorCommandsTests {
    @Test func spoolListAndShowReadWhatARunningBridgeSpooled() async throws {
        let spool = NSTemporaryDirectory() + "tc-bridge-operator-spool-\(UUID().uuidString)"
        let bridge = try await BridgeProcess(
            node: .shared, environment: ["AMQP_URL": "amqp://guest:guest@127.0.0.1:1/%2F", "TC_BRIDGE_SPOOL_DIR": spool])
        let body = Webhooks.body(actions: ["RAISED_INVOICE", "CLIENT_PAID_INVOICE"], marker: "operator-marker")
        let answer = try await postSigned(port: bridge.port, body: body)
        #expect(answer.status == 200 && answer.body.contains("spooled"))

        let list = try await runBridgeCommand(["spool", "list", "--spool-dir", spool])
        #expect(list.status == 0, "\(list.output)")
        #expect(list.output.contains("1 records in 1 segments"), "\(list.output)")
        #expect(list.output.contains("2 messages"))
        let segment = try #require(list.output.firstMatch(of: /segment (\d+)\t/)).1
        let show = try await runBridgeCommand(["spool", "show", String(segment), "--spool-dir", spool])
        #expect(show.status == 0)
        #expect(show.output.contains("RAISED_INVOICE") && show.output.contains("CLIENT_PAID_INVOICE") && show.output.contains("operator-marker"))
        #expect(show.output.contains("\(sha256HexForTests(body))-0"), "message ids are shown")
        let missing = try await runBridgeCommand(["spool", "show", "999999", "--spool-dir", spool])
        #expect(missing.status != 0 && missing.output.contains("no segment 999999"))
        bridge.signal(SIGTERM)
        _ = try await bridge.waitForExit()
    }

    @Test func setAsideRecordsAreReplayedToTheBrokerOrPurged() async throws {
        let spool = NSTemporaryDirectory() + "tc-bridge-operator-aside-\(UUID().uuidString)"
        let exchange = "operator-aside-\(UUID().uuidString.prefix(8))"
        let probe = try await QueueProbe(exchange: exchange)
        defer { Task { await probe.stop() } }
        try FileManager.default.createDirectory(atPath: spool + "/corrupt", withIntermediateDirectories: true)
        let message = AMQPOutboundMessage(
            exchange: exchange, routingKey: "SET_ASIDE", properties: AMQPProperties(messageID: "aside-1"), body: Array("{}".utf8))
        try Data(SpooledMessages.encode([message])).write(to: URL(fileURLWithPath: spool + "/corrupt/segment-1-offset-0.bin"))
        try Data("not a record".utf8).write(to: URL(fileURLWithPath: spool + "/corrupt/segment-2-offset-0.bin"))

        let replay = try await runBridgeCommand(
            ["spool", "replay", "--spool-dir", spool], environment: ["AMQP_URL": RabbitMQNode.shared.url])
        #expect(replay.status == 0, "\(replay.output)")
        #expect(replay.output.contains("replayed 1 messages") && replay.output.contains("skipped (not a record of messages)"))
        let received = try await probe.waitForMessages(count: 1)
        #expect(received.first?.properties.messageID == "aside-1")
        #expect(FileManager.default.fileExists(atPath: spool + "/corrupt/replayed/segment-1-offset-0.bin"))

        let dryRun = try await runBridgeCommand(["spool", "purge", "--spool-dir", spool])
        #expect(dryRun.output.contains("1 set-aside records would be deleted"))
        #expect(FileManager.default.fileExists(atPath: spool + "/corrupt/segment-2-offset-0.bin"))
        _ = try await runBridgeCommand(["spool", "purge", "--yes", "--spool-dir", spool])
        #expect(!FileManager.default.fileExists(atPath: spool + "/corrupt/segment-2-offset-0.bin"))
        #expect(FileManager.default.fileExists(atPath: spool + "/corrupt/replayed/segment-1-offset-0.bin"), "replayed ones are kept")
    }

    @Test func unroutableEventsAreListedThenReplayedOnceAConsumerHasBound() async throws {
        let exchange = "operator-unroutable-\(UUID().uuidString.prefix(8))"
        let bridge = try await BridgeProcess(node: .shared, arguments: ["--exchange", exchange])
        try await bridge.waitUntilHealthy()
        let body = Webhooks.body(actions: ["NOBODY_LISTENS"])
        #expect(try await postSigned(port: bridge.port, body: body).status == 200)
        let environment = ["AMQP_URL": RabbitMQNode.shared.url]
        let admin = AMQPAdmin(connection: RabbitMQNode.shared.connection)
        try await waitUntil("kept in the unroutable queue") { (try? await admin.messageCount(queue: "\(exchange).unroutable")) == 1 }

        let list = try await runBridgeCommand(["unroutable", "list", "--exchange", exchange], environment: environment)
        #expect(list.status == 0, "\(list.output)")
        #expect(list.output.contains("NOBODY_LISTENS\t\(sha256HexForTests(body))-0"))
        // The listing's basic.get leaves the message unacknowledged until its channel closes; the
        // queue puts it back when it learns of the close, which a count (served ahead of that) can overtake.
        try await waitUntil("listing leaves it in place") { (try? await admin.messageCount(queue: "\(exchange).unroutable")) == 1 }

        let probe = try await QueueProbe(exchange: exchange, bindingKeys: ["NOBODY_LISTENS"])
        defer { Task { await probe.stop() } }
        let replay = try await runBridgeCommand(["unroutable", "replay", "--exchange", exchange], environment: environment)
        #expect(replay.output.contains("1 messages published to \(exchange) again"), "\(replay.output)")
        let received = try await probe.waitForMessages(count: 1)
        #expect(received.first?.properties.messageID == "\(sha256HexForTests(body))-0")
        #expect(try await admin.messageCount(queue: "\(exchange).unroutable") == 0)
        bridge.signal(SIGTERM)
        _ = try await bridge.waitForExit()
    }
}

/// `tc-consume dead-letters`: listing and re-queueing a service's dead-lettered events.
@Suite struct DeadLetterToolTests {
    @Test func deadLettersAreListedThenMovedBackWithTheirAttemptCountReset() async throws {
        let queue = "dlq-tool-\(UUID().uuidString.prefix(8))"
        let admin = AMQPAdmin(connection: RabbitMQNode.shared.connection)
        try await admin.declare(queues: [AMQPQueueDeclaration(name: queue), AMQPQueueDeclaration(name: "\(queue).dead-letter")])
        defer { Task { _ = try? await admin.deleteQueue(queue); _ = try? await admin.deleteQueue("\(queue).dead-letter") } }
        try await admin.publishConfirmed([
            AMQPOutboundMessage(
                exchange: "", routingKey: "\(queue).dead-letter",
                properties: AMQPProperties(
                    messageID: "dead-1",
                    headers: [("tc-error", .string("failed 3 times; last error: boom")), ("tc-attempt", .int(3)), ("tc-original-routing-key", .string("RAISED_INVOICE"))]),
                body: Array("{}".utf8))
        ])

        @Sendable func run(_ arguments: [String]) throws -> (status: Int32, output: String) { try Self.deadLetters(queue, arguments) }
        let list = try await onOwnThread { try run([]) }
        #expect(list.status == 0, "\(list.output)")
        #expect(list.output.contains("RAISED_INVOICE\tdead-1\tfailed 3 times; last error: boom"))
        // As above: the listed message is back in the queue once the queue has learnt of the close.
        try await waitUntil("listing leaves it in place") { (try? await admin.messageCount(queue: "\(queue).dead-letter")) == 1 }

        let requeue = try await onOwnThread { try run(["--requeue"]) }
        #expect(requeue.status == 0, "\(requeue.output)")
        #expect(requeue.output.contains("1 messages moved from \(queue).dead-letter to \(queue)"), "\(requeue.output)")
        // The tool acknowledged the original before closing its connection cleanly, and the queue
        // applies a channel's acks before it requeues what that channel left unacknowledged; a
        // basic.get (peek) comes after both. So no copy is left behind, not a moment later.
        let left = try await admin.peek(queue: "\(queue).dead-letter", limit: 10)
        #expect(left.isEmpty, "left behind: \(left.map { "\($0.properties.messageID ?? "-") redelivered=\($0.redelivered)" })")
        let back = try await admin.peek(queue: queue, limit: 10)
        #expect(back.map(\.properties.messageID) == ["dead-1"])
        #expect(back.first?.properties.header("tc-attempt") == nil, "attempts start again")
        #expect(back.first?.properties.header("tc-error") == .string("failed 3 times; last error: boom"), "the error stays for the record")
    }

    @Test func aMoveToAQueueThatDoesNotExistLeavesTheDeadLettersWhereTheyAre() async throws {
        // The service's own queue was never declared (a typo, a service not deployed yet): its
        // name routes nowhere, and a copy sent there would be dropped by the broker, yet confirmed.
        let service = "dlq-missing-\(UUID().uuidString.prefix(8))"
        let admin = AMQPAdmin(connection: RabbitMQNode.shared.connection)
        try await admin.declare(queues: [AMQPQueueDeclaration(name: "\(service).dead-letter")])
        defer { Task { _ = try? await admin.deleteQueue("\(service).dead-letter") } }
        try await admin.publishConfirmed(
            (1...2).map { AMQPOutboundMessage(exchange: "", routingKey: "\(service).dead-letter", properties: AMQPProperties(messageID: "dead-\($0)"), body: [1]) })

        let requeue = try await onOwnThread { try Self.deadLetters(service, ["--requeue"]) }
        #expect(requeue.status != 0, "\(requeue.output)")
        #expect(requeue.output.contains("0 moved; the next copy reached no queue"), "\(requeue.output)")
        let left = try await admin.peek(queue: "\(service).dead-letter", limit: 10)
        #expect(left.compactMap(\.properties.messageID).sorted() == ["dead-1", "dead-2"])
    }

    /// Runs `tc-consume dead-letters SERVICE ARGUMENTS` against the shared node, to its end.
    static func deadLetters(_ service: String, _ arguments: [String]) throws -> (status: Int32, output: String) {
        let tool = URL(fileURLWithPath: BridgeProcess.executable).deletingLastPathComponent().appendingPathComponent("tc-consume").path
        do {
            return (0, try runProcess(tool, ["dead-letters", service, "--amqp-url", RabbitMQNode.shared.url] + arguments))
        } catch let failure as ProcessFailure {
            return (failure.status, failure.output)
        }
    }
}
