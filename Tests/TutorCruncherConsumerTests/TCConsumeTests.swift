import Foundation
import TestSupport
import Testing
import TutorCruncherConsumer

/// The `tc-consume` debugging tool as a child process.
@Suite struct TCConsumeTests {
    @Test(arguments: [SIGTERM, SIGINT])
    func printsOneLinePerSubscribedEventAndExitsZeroOnSignal(signal: Int32) async throws {
        let exchange = uniqueExchange()
        let queue = "tc-consume-\(UUID().uuidString.prefix(8))"
        let output = NSTemporaryDirectory() + "tc-consume-\(UUID().uuidString).out"
        #expect(FileManager.default.createFile(atPath: output, contents: nil))
        let process = Process()
        process.executableURL = URL(fileURLWithPath: BridgeProcess.executable.replacingOccurrences(of: "/tc-bridge", with: "/tc-consume"))
        process.arguments = [
            "--amqp-url", RabbitMQNode.shared.url, "--exchange", exchange, "--queue", queue,
            "--action", "RAISED_INVOICE", "--action", "CLIENT_PAID_INVOICE",
        ]
        process.standardOutput = try FileHandle(forWritingTo: URL(fileURLWithPath: output))
        try process.run()
        defer { if process.isRunning { process.terminate() } }

        let admin = AMQPAdminProbe(queue: queue)
        try await waitUntil("tc-consume subscribed") { await admin.hasConsumer() }
        let envelopes = try await publishWebhookBodies(
            exchange: exchange,
            bodies: [
                Webhooks.body(actions: ["LOGIN"], subjectID: 1), Webhooks.body(actions: ["RAISED_INVOICE"], subjectID: 2),
                Webhooks.body(actions: ["CLIENT_PAID_INVOICE"], subjectID: 3),
            ])
        let read = { String(decoding: FileManager.default.contents(atPath: output) ?? Data(), as: UTF8.self) }
        try await waitUntil("two lines printed") { read().split(separator: "\n").count >= 2 }
        kill(process.processIdentifier, signal)
        try await waitUntil("tc-consume exited") { !process.isRunning }
        #expect(process.terminationStatus == 0)
        let lines = read().split(separator: "\n").map(String.init).sorted()
        #expect(lines == [
            "CLIENT_PAID_INVOICE\tClient\t3\t\(envelopes[2].eventID)",
            "RAISED_INVOICE\tClient\t2\t\(envelopes[1].eventID)",
        ])
    }
}

extension TCConsumeTests {
    @Test func jsonPrintsEachMessageWholeOnOneLine() async throws {
        let exchange = uniqueExchange()
        let queue = "tc-consume-\(UUID().uuidString.prefix(8))"
        let output = NSTemporaryDirectory() + "tc-consume-\(UUID().uuidString).out"
        #expect(FileManager.default.createFile(atPath: output, contents: nil))
        let process = Process()
        process.executableURL = URL(fileURLWithPath: BridgeProcess.executable.replacingOccurrences(of: "/tc-bridge", with: "/tc-consume"))
        process.arguments = ["--amqp-url", RabbitMQNode.shared.url, "--exchange", exchange, "--queue", queue, "--json"]
        process.standardOutput = try FileHandle(forWritingTo: URL(fileURLWithPath: output))
        try process.run()
        defer { if process.isRunning { process.terminate() } }
        try await waitUntil("tc-consume subscribed") { await AMQPAdminProbe(queue: queue).hasConsumer() }
        let envelopes = try await publishWebhookBodies(exchange: exchange, bodies: [Webhooks.body(actions: ["RAISED_INVOICE"], subjectID: 2)])
        let read = { String(decoding: FileManager.default.contents(atPath: output) ?? Data(), as: UTF8.self) }
        try await waitUntil("a line printed") { read().hasSuffix("\n") }
        kill(process.processIdentifier, SIGTERM)
        try await waitUntil("tc-consume exited") { !process.isRunning }
        let line = try #require(read().split(separator: "\n").first)
        let object = try #require(try JSONSerialization.jsonObject(with: Data(line.utf8)) as? [String: Any])
        #expect(object["routing_key"] as? String == "RAISED_INVOICE")
        #expect(object["message_id"] as? String == envelopes[0].eventID)
        #expect(object["redelivered"] as? Bool == false)
        let headers = try #require(object["headers"] as? [String: Any])
        #expect(headers["tc-subject-model"] as? String == "Client" && headers["tc-envelope-version"] as? Int == 1)
        let body = try #require(object["body"] as? [String: Any])
        #expect(body["event_id"] as? String == envelopes[0].eventID && body["action"] as? String == "RAISED_INVOICE")
    }
}

/// Asks the broker whether a queue has a consumer yet (absent queue: no).
struct AMQPAdminProbe {
    let queue: String
    func hasConsumer() async -> Bool {
        (try? await AMQPAdmin(connection: RabbitMQNode.shared.connection).consumerCount(queue: queue)) ?? 0 > 0
    }
}

import AMQPClient
