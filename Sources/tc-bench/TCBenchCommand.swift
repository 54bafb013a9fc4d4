@_spi(Benchmarks) import AMQPClient
import ArgumentParser
import Foundation
import TutorCruncher
import TutorCruncherSignature

/// `tc-bench`: the pieces `scripts/bench` drives. Distinct signed bodies for `wrk`, the bare
/// publisher the bridge is compared with, and queue bookkeeping. Not part of the product.
struct TCBenchCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "tc-bench",
        abstract: "Benchmark helpers for scripts/bench (bodies, signatures, a bare publisher, queue counts).",
        subcommands: [Template.self, Signatures.self, Bare.self, HTTPFloor.self, Stages.self, ResetQueue.self, CountQueue.self]
    )
}

extension TCBenchCommand {
    /// What `@main` would call (top-level code in `main.swift` would pick the synchronous `main()`).
    static func asyncMain() async {
        await main(nil)
    }
}

/// The placeholder `benchmarks/signed-bodies.lua` and ``BodyTemplate`` replace, once per event.
let marker = "__ID__"

/// A body with one marker per event. Body `i` replaces the `k`-th marker with `i-k`, so every
/// body and every event is distinct (the bridge's dedup window would answer a repeat unpublished).
struct BodyTemplate {
    let parts: [[UInt8]]

    init(bytes: [UInt8]) {
        var parts: [[UInt8]] = []
        var current: [UInt8] = []
        let needle = Array(marker.utf8)
        var index = 0
        while index < bytes.count {
            if bytes[index] == needle[0], bytes.count - index >= needle.count, Array(bytes[index..<index + needle.count]) == needle {
                parts.append(current)
                current = []
                index += needle.count
            } else {
                current.append(bytes[index])
                index += 1
            }
        }
        parts.append(current)
        self.parts = parts
    }

    func body(_ index: Int) -> [UInt8] {
        var body: [UInt8] = []
        body.reserveCapacity(parts.reduce(0) { $0 + $1.count } + parts.count * 12)
        for (k, part) in parts.enumerated() {
            if k > 0 { body += Array("\(index)-\(k)".utf8) }
            body += part
        }
        return body
    }
}

extension TCBenchCommand {
    /// Writes a body template: `--events` copies of the example's first event, each padded to
    /// `--event-bytes` (when larger than the event) and marked in its `verb`, with `request_time` now.
    struct Template: ParsableCommand {
        static let configuration = CommandConfiguration(abstract: "Write a body template with one \(marker) per event.")

        @Option(help: "A TutorCruncher example body with one event, or 'minimal' (a 330-byte event).") var example: String
        @Option(help: "Events per body.") var events = 1
        @Option(help: "Pad each event with a string field to about this many bytes (0: as in the example).") var eventBytes = 0
        @Option(help: "Output file.") var out: String

        func run() throws {
            let text = example == "minimal" ? Self.minimalBody : try String(contentsOfFile: example, encoding: .utf8)
            guard let open = text.range(of: "\"events\""), let start = text[open.upperBound...].firstIndex(of: "["),
                let end = text.range(of: "]", options: .backwards, range: start..<text.endIndex)?.lowerBound
            else { throw ValidationError("\(example): no events array") }
            var event = text[text.index(after: start)..<end].trimmingCharacters(in: .whitespacesAndNewlines)
            guard let verb = event.range(of: "\"verb\": \"") ?? event.range(of: "\"verb\":\"") else {
                throw ValidationError("\(example): the event has no verb to mark")
            }
            event.replaceSubrange(verb, with: "\"verb\": \"\(marker) ")
            if eventBytes > event.utf8.count + 20, let brace = event.firstIndex(of: "{") {
                let padding = String(repeating: "x", count: eventBytes - event.utf8.count - 16)
                event.insert(contentsOf: "\"bench_padding\": \"\(padding)\", ", at: event.index(after: brace))
            }
            let now = Int(Date().timeIntervalSince1970)
            let body = "{\"events\": [" + Array(repeating: event, count: max(1, events)).joined(separator: ", ") + "], \"request_time\": \(now)}"
            try body.write(toFile: out, atomically: true, encoding: .utf8)
        }

        static let minimalBody = """
            {"events": [{"action": "CHANGED_CONTRACTOR_STATUS", "verb": "Changed a Tutor's status", \
            "timestamp": "2026-11-30T12:00:00.000000Z", "branch": 3, "actor": {"name": "Billy Holiday", "id": 59, \
            "user_id": 58, "url": ""}, "subject": {"model": "Tutor", "url": "https://secure.tutorcruncher.com/api/contractors/54/", \
            "id": 54, "status": "approved"}}]}
            """
    }

    /// Writes the signatures of bodies `from..<from+count` of a template, one hex line each. The key
    /// comes from `TC_PRIVATE_KEY` (never the command line).
    struct Signatures: ParsableCommand {
        static let configuration = CommandConfiguration(abstract: "Sign bodies from..<from+count of a template (key: env TC_PRIVATE_KEY).")

        @Option var template: String
        @Option var from = 0
        @Option var count: Int
        @Option var out: String

        func run() throws {
            guard let key = ProcessInfo.processInfo.environment["TC_PRIVATE_KEY"], !key.isEmpty else {
                throw ValidationError("set TC_PRIVATE_KEY")
            }
            let template = BodyTemplate(bytes: Array(try Data(contentsOf: URL(fileURLWithPath: template))))
            let signingKey = WebhookSigningKey(key)
            var output = ""
            output.reserveCapacity(count * 65)
            for index in from..<from + count {
                output += WebhookVerifier.signature(for: template.body(index), key: signingKey)
                output += "\n"
            }
            try output.write(toFile: out, atomically: true, encoding: .utf8)
        }
    }

    /// Publishes `--count` persistent messages (bodies of the template) with `--in-flight`
    /// unconfirmed at once, straight on one connection; prints `confirmed=N seconds=S rate=R`.
    struct Bare: ParsableCommand {
        static let configuration = CommandConfiguration(abstract: "Bare rabbitmq-c publisher: the yardstick.")

        @Option var url: String
        @Option var exchange: String
        @Option var routingKey = "changed_contractor_status"
        @Option var template: String
        @Option var count: Int
        @Option var inFlight: Int
        @Option(help: "First body index (distinct bodies across rounds).") var from = 0
        @Flag(help: "Properties and headers shaped like the bridge's messages (type, timestamp, app id, tc-* headers).")
        var bridgeShaped = false
        @Option(help: "Microseconds to sleep before each publish: the broker idles meanwhile, as between a receiver's requests.")
        var pauseUs = 0

        func run() throws {
            guard count >= 1, inFlight >= 1 else { throw ValidationError("count and in-flight must be at least 1") }
            guard (0...1_000_000).contains(pauseUs) else { throw ValidationError("--pause-us is 0 to 1,000,000") }
            guard pauseUs == 0 || inFlight == 1 else {
                throw ValidationError("--pause-us needs --in-flight 1 (a confirm arriving during a pause would wait for it)")
            }
            let template = BodyTemplate(bytes: Array(try Data(contentsOf: URL(fileURLWithPath: template))))
            let connection = try AMQPConnectionConfiguration(url: url)
            let (exchange, routingKey, from, bridgeShaped) = (exchange, routingKey, from, bridgeShaped)
            let timestamp = Int64(Date().timeIntervalSince1970)
            let outcome = try BarePublisher.run(connection: connection, count: count, inFlight: inFlight, pause: .microseconds(pauseUs)) { index in
                var properties = AMQPProperties(contentType: "application/json", messageID: "bare-\(from + index)")
                if bridgeShaped {
                    properties.type = routingKey
                    properties.timestamp = timestamp
                    properties.appID = "tc-bridge"
                    properties.headers = [
                        ("tc-envelope-version", .int(1)), ("tc-subject-model", .string("Tutor")), ("tc-subject-id", .int(54)),
                        ("tc-branch", .int(3)),
                    ]
                }
                return AMQPOutboundMessage(
                    exchange: exchange, routingKey: routingKey, properties: properties, body: template.body(from + index), mandatory: true)
            }
            let seconds = Double(outcome.elapsed.components.seconds) + Double(outcome.elapsed.components.attoseconds) / 1e18
            let sorted = outcome.latencies.sorted()
            func percentile(_ fraction: Double) -> Int {
                guard !sorted.isEmpty else { return 0 }
                let latency = sorted[min(sorted.count - 1, Int(Double(sorted.count) * fraction))]
                return Int(latency.components.seconds) * 1_000_000 + Int(latency.components.attoseconds / 1_000_000_000_000)
            }
            print(
                "confirmed=\(outcome.confirmed) seconds=\(seconds) rate=\(Int(Double(outcome.confirmed) / seconds)) "
                    + "p50_us=\(percentile(0.5)) p99_us=\(percentile(0.99)) p999_us=\(percentile(0.999)) max_us=\(percentile(1))")
        }
    }

    /// Deletes and declares a durable queue bound to `--exchange` with `#` (the exchange is declared too).
    struct ResetQueue: AsyncParsableCommand {
        static let configuration = CommandConfiguration(commandName: "reset-queue", abstract: "Delete and declare the sink queue.")
        @Option var url: String
        @Option var exchange: String
        @Option var queue: String

        func run() async throws {
            let admin = AMQPAdmin(connection: try AMQPConnectionConfiguration(url: url))
            _ = try? await admin.deleteQueue(queue)
            try await admin.declare(
                exchanges: [AMQPExchangeDeclaration(name: exchange, mode: .declareIfMissing)],
                queues: [AMQPQueueDeclaration(name: queue, bindings: [AMQPQueueDeclaration.Binding(exchange: exchange, routingKey: "#")])])
        }
    }

    /// Prints the number of ready messages in a queue.
    struct CountQueue: AsyncParsableCommand {
        static let configuration = CommandConfiguration(commandName: "count-queue", abstract: "Print a queue's ready message count.")
        @Option var url: String
        @Option var queue: String

        func run() async throws {
            print(try await AMQPAdmin(connection: try AMQPConnectionConfiguration(url: url)).messageCount(queue: queue))
        }
    }
}
