import ArgumentParser
import Foundation
import Hummingbird
import Logging
import NIOCore
import TCBridge
import TutorCruncherSignature

extension TCBenchCommand {
    /// The HTTP framework alone: Hummingbird on the same event loops as the bridge, reading each
    /// `POST /webhook` body whole and answering `{"events":1}` without verifying, parsing or
    /// publishing anything. What the bridge costs above this is the bridge's own work.
    ///
    /// `--answer-after-ms`: answer that long after the body is read, from a thread of its own (as
    /// the publisher's owner thread answers when confirms arrive), so the framework is measured at
    /// the request rate and concurrency the broker's confirm latency gives the bridge.
    /// `--bridge`: serve the bridge's own application (signature, replay window, dedup window in
    /// memory, scan, envelopes, messages) with the broker replaced by that delay.
    struct HTTPFloor: AsyncParsableCommand {
        static let configuration = CommandConfiguration(
            commandName: "http-floor", abstract: "Hummingbird alone: read each POST body, answer 200, publish nothing.")
        @Option var port: Int
        @Option(help: "Answer this long after the body is read, from a thread of its own (0: at once).")
        var answerAfterMs = 0
        @Flag(help: "Serve the bridge's application (signing key from TC_PRIVATE_KEY), publishing to that delay instead of a broker.")
        var bridge = false

        func run() async throws {
            let answers = answerAfterMs > 0 ? DelayedAnswers(delay: .milliseconds(answerAfterMs)) : nil
            if bridge {
                guard let key = ProcessInfo.processInfo.environment["TC_PRIVATE_KEY"], !key.isEmpty else {
                    throw ValidationError("--bridge needs TC_PRIVATE_KEY")
                }
                var configuration = BridgeConfiguration(verifier: WebhookVerifier(keys: [WebhookSigningKey(key)]))
                configuration.port = port
                // The bridge's own log handler, at the level the benchmark runs the bridge with.
                var logger = Logger(label: "tc-bridge") { BridgeLogHandler(label: $0, format: .text) }
                logger.logLevel = .error
                let app = buildApplication(
                    configuration: configuration, publisher: DelayedPublisher(answers: answers ?? DelayedAnswers(delay: .zero)), logger: logger)
                try await app.runService()
                return
            }
            let router = Router()
            router.post("webhook") { request, _ -> Response in
                var bytes = 0
                for try await chunk in request.body { bytes += chunk.readableBytes }
                if let answers { await answers.wait() }
                return Response(
                    status: .ok, headers: [.contentType: "application/json"],
                    body: ResponseBody(byteBuffer: ByteBuffer(string: bytes > 0 ? "{\"events\":1}\n" : "{\"events\":0}\n")))
            }
            router.get("health") { _, _ in "ok" }
            let app = Application(router: router, configuration: .init(address: .hostname("127.0.0.1", port: port)))
            try await app.runService()
        }
    }
}
