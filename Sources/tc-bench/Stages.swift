@_spi(Benchmarks) import AMQPClient
import ArgumentParser
import Foundation
import HexCoding
import Logging
import TCBridge
import TutorCruncher
import TutorCruncherSignature

extension TCBenchCommand {
    /// The request path's CPU stages one by one, in this process, on distinct bodies of a template:
    /// nanoseconds per body for each. Deterministic enough to compare two ways of doing one stage,
    /// which the end-to-end run (three processes on two shared cores) cannot resolve below ~5 %.
    struct Stages: AsyncParsableCommand {
        static let configuration = CommandConfiguration(abstract: "Time the request path's CPU stages per body, in process.")

        @Option var template: String
        @Option(help: "Bodies per stage.") var count = 20000
        @Option(help: "The dedup window's limit; as many distinct bodies fill it before it is timed, at its limit.")
        var dedupEntries = 100_000

        /// The dedup window (in memory, as `buildApplication` makes it): claim and complete of a
        /// distinct digest each, once the window is full, so every completion also evicts.
        func timeDedupWindow() async {
            var generator = SystemRandomNumberGenerator()
            let digests: [BodyDigest] = (0..<(dedupEntries + count)).compactMap { _ in
                BodyDigest(bytes: (0..<32).map { _ in UInt8.random(in: .min ... .max, using: &generator) })
            }
            let window = DedupWindow(window: .seconds(3600), maxEntries: dedupEntries)
            for digest in digests[..<dedupEntries] where await window.claim(digest) == .new { await window.complete(digest, accepted: true) }
            let started = ContinuousClock.now
            for digest in digests[dedupEntries...] where await window.claim(digest) == .new { await window.complete(digest, accepted: true) }
            let elapsed = ContinuousClock.now - started
            let nanoseconds = Double(elapsed.components.seconds) * 1e9 + Double(elapsed.components.attoseconds) / 1e9
            print(
                "dedup window claim + complete, full at \(dedupEntries) entries (\(window.count) held): "
                    + "\(String(format: "%.2f", nanoseconds / Double(count) / 1000)) µs per body")
        }

        func run() async throws {
            let template = BodyTemplate(bytes: Array(try Data(contentsOf: URL(fileURLWithPath: template))))
            let bodies = (0..<count).map { template.body($0) }
            let verifier = WebhookVerifier(keys: [WebhookSigningKey("bench-key")])
            let signatures = bodies.map { verifier.signature(for: $0) }
            let factory = MessageFactory(exchange: "bench", appID: "tc-bridge")
            let receivedAt = UTCTimestamp.now()
            var sink = 0

            func stage(_ name: String, _ work: (Int) -> Int) {
                for index in 0..<min(1000, count) { sink &+= work(index) }  // warm up
                let started = ContinuousClock.now
                for index in 0..<count { sink &+= work(index) }
                let elapsed = ContinuousClock.now - started
                let nanoseconds = Double(elapsed.components.seconds) * 1e9 + Double(elapsed.components.attoseconds) / 1e9
                print("\(name): \(String(format: "%.2f", nanoseconds / Double(count) / 1000)) µs per body")
            }
            stage("signature (HMAC-SHA256, constant-time compare)") { index in
                verifier.verify(body: bodies[index], signatureHeader: signatures[index]) == .valid ? 1 : 0
            }
            // As `WebhookIngest` makes it: the 32 bytes once (its dedup key is made from them), their hex once.
            stage("body digest (SHA-256 bytes, then their hex)") { index in
                let hash = sha256(bodies[index])
                return Hex.encode(hash).utf8.count &+ Int(hash[index & 31])
            }
            stage("  of it: SHA-256 bytes only") { index in Int(sha256(bodies[index])[index & 31]) }
            let hashes = bodies.map(sha256)
            stage("  of it: hex of the 32 bytes only") { index in Hex.encode(hashes[index]).utf8.count }
            stage("request_time scan (replay window)") { index in
                if case .seconds = RequestTime.scan(bodies[index]) { return 1 }
                return 0
            }
            stage("before: request_time scan, then a tree parse + envelopes + messages") { index in
                guard case .seconds = RequestTime.scan(bodies[index]) else { return 0 }
                guard case .events(let batch) = WebhookPayload.parse(bodies[index]) else { return 0 }
                return EventEnvelope.envelopes(for: batch, bodyDigest: "d", receivedAt: receivedAt)
                    .map { factory.message(for: $0, receivedAt: receivedAt).body.count }.reduce(0, +)
            }
            stage("after: one scan (time included) + spliced envelopes + messages") { index in
                guard case .events(let batch) = WebhookPayload.scan(bodies[index]) else { return 0 }
                guard case .seconds = RequestTime(scanned: batch) else { return 0 }
                return batch.events.indices.map { position in
                    factory.message(for: batch.envelope(at: position, bodyDigest: "d", receivedAt: receivedAt), receivedAt: receivedAt).body.count
                }.reduce(0, +)
            }
            // The owner thread's part of a publish: method, content header and body frames.
            let messages = bodies.map { body -> AMQPOutboundMessage in
                guard case .events(let batch) = WebhookPayload.scan(body) else { return factory.unrecognisedMessage(body: body, bodyDigest: "d", path: "/", reason: "?", receivedAt: receivedAt) }
                return factory.message(for: batch.envelope(at: 0, bodyDigest: "d", receivedAt: receivedAt), receivedAt: receivedAt)
            }
            let encoder = PublishFramesBenchmark()
            stage("publish frames of the event's message (method, content header, body)") { index in
                encoder.encode(messages[index]) ?? 0
            }
            stage("parse into a tree only") { index in
                if case .events(let batch) = WebhookPayload.parse(bodies[index]) { return batch.events.count }
                return 0
            }
            stage("scan only") { index in
                if case .events(let batch) = WebhookPayload.scan(bodies[index]) { return batch.events.count }
                return 0
            }
            // The bridge's line per request at info, as `buildRouter` logs it (lines go to standard
            // error: run with 2>/dev/null).
            var logger = Logger(label: "tc-bridge") { BridgeLogHandler(label: $0, format: .text) }
            logger.logLevel = .info
            stage("request log line at info (text format; metadata, render, hand-off to the writer)") { index in
                logger.info(
                    "webhook",
                    metadata: [
                        "request_id": "\(index)", "outcome": "published", "status": "200", "events": "1",
                        "actions": "CHANGED_CONTRACTOR_STATUS", "bytes": "\(bodies[index].count)", "ms": "\(index % 7)",
                    ])
                return 1
            }
            BridgeLogHandler.flush()
            await timeDedupWindow()
            print("(checksum \(sink))")
        }
    }
}
