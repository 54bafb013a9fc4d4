import Foundation
import TestSupport
import Testing
import TutorCruncherConsumer

/// The `tc-consume` debugging tool as a child process.
@Suite struct TCConsumeTests {
    @Test(arguments: [SIGTERM, SIGINT])
    func printsOneLinePerSubscribedEventAndExitsZeroOnSignal(signal: Int32) async throws {
        let consume = try await RunningTCConsume.start(["--action", "RAISED_INVOICE", "--action", "CLIENT_PAID_INVOICE"])
        defer { consume.terminate() }
        let envelopes = try await publishWebhookBodies(
            exchange: consume.exchange,
            bodies: [
                Webhooks.body(actions: ["LOGIN"], subjectID: 1), Webhooks.body(actions: ["RAISED_INVOICE"], subjectID: 2),
                Webhooks.body(actions: ["CLIENT_PAID_INVOICE"], subjectID: 3),
            ])
        try await waitUntil("two lines printed") { consume.printed.split(separator: "\n").count >= 2 }
        #expect(try await consume.stop(signal) == 0)
        let lines = consume.printed.split(separator: "\n").map(String.init).sorted()
        #expect(lines == [
            "CLIENT_PAID_INVOICE\tClient\t3\t\(envelopes[2].eventID)",
            "RAISED_INVOICE\tClient\t2\t\(envelopes[1].eventID)",
        ])
    }
}

extension TCConsumeTests {
    @Test func jsonPrintsEachMessageWholeOnOneLine() async throws {
        let consume = try await RunningTCConsume.start(["--json"])
        defer { consume.terminate() }
        let envelopes = try await publishWebhookBodies(
            exchange: consume.exchange, bodies: [Webhooks.body(actions: ["RAISED_INVOICE"], subjectID: 2)])
        try await waitUntil("a line printed") { consume.printed.hasSuffix("\n") }
        _ = try await consume.stop(SIGTERM)
        let line = try #require(consume.printed.split(separator: "\n").first)
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

/// `tc-consume` as a child process on a queue of its own, bound to a new exchange, its standard
/// output collected in a file.
struct RunningTCConsume {
    let exchange: String
    let process: Process
    let output: String

    /// Starts it with the connection, exchange and queue flags followed by `arguments`, and returns
    /// once its queue has a consumer.
    static func start(_ arguments: [String]) async throws -> RunningTCConsume {
        let exchange = uniqueExchange()
        let queue = "tc-consume-\(UUID().uuidString.prefix(8))"
        let output = NSTemporaryDirectory() + "tc-consume-\(UUID().uuidString).out"
        #expect(FileManager.default.createFile(atPath: output, contents: nil))
        let process = Process()
        process.executableURL = URL(fileURLWithPath: BridgeProcess.executable.replacingOccurrences(of: "/tc-bridge", with: "/tc-consume"))
        process.arguments = ["--amqp-url", RabbitMQNode.shared.url, "--exchange", exchange, "--queue", queue] + arguments
        process.standardOutput = try FileHandle(forWritingTo: URL(fileURLWithPath: output))
        try process.run()
        let running = RunningTCConsume(exchange: exchange, process: process, output: output)
        do {
            try await waitUntil("tc-consume subscribed") { await AMQPAdminProbe(queue: queue).hasConsumer() }
        } catch {
            running.terminate()
            throw error
        }
        return running
    }

    /// What it has printed so far.
    var printed: String { String(decoding: FileManager.default.contents(atPath: output) ?? Data(), as: UTF8.self) }

    /// Sends `signal`, waits for the exit and returns its status.
    func stop(_ signal: Int32) async throws -> Int32 {
        kill(process.processIdentifier, signal)
        try await waitUntil("tc-consume exited") { !process.isRunning }
        return process.terminationStatus
    }

    func terminate() { if process.isRunning { process.terminate() } }
}

/// Asks the broker whether a queue has a consumer yet (absent queue: no).
struct AMQPAdminProbe {
    let queue: String
    func hasConsumer() async -> Bool {
        (try? await AMQPAdmin(connection: RabbitMQNode.shared.connection).consumerCount(queue: queue)) ?? 0 > 0
    }
}

import AMQPClient
