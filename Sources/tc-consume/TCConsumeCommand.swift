import ArgumentParser
import Logging
import ServiceLifecycle
import UnixSignals
import TutorCruncher
import TutorCruncherConsumer

#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

/// `tc-consume`: prints one line per event of a subscription. A debugging tool against a live bridge.
@main
struct TCConsumeCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "tc-consume",
        abstract: "Subscribe to TutorCruncher events published by tc-bridge and print one line per event.",
        discussion: """
            Each line: action, subject model, subject id, event id (tab-separated). Exits 0 on SIGTERM/SIGINT.
            The queue is durable: events published while tc-consume is not running wait for it.
            `tc-consume dead-letters QUEUE` lists or re-queues a service's dead-lettered events.
            """,
        subcommands: [DeadLettersCommand.self]
    )

    @Option(help: "Broker URL (env: AMQP_URL; default amqp://guest:guest@127.0.0.1:5672/%2F).")
    var amqpURL: String?

    @Option(help: "The bridge's exchange.")
    var exchange: String = "tutorcruncher"

    @Option(help: "Queue to declare and consume.")
    var queue: String = "tc-consume"

    @Option(name: .customLong("action"), help: "Action to subscribe to; repeat for several. None: every action.")
    var actions: [String] = []

    @Option(help: "Most unacknowledged events at once.")
    var prefetch: UInt16 = 20

    @Flag(help: "Print each message whole, one JSON object per line: routing key, message id, attempt, redelivered, every header, and the body (the envelope).")
    var json = false

    func run() async throws {
        var logger = Logger(label: "tc-consume")
        logger.logLevel = .warning
        let url = amqpURL ?? getenv("AMQP_URL").map { String(cString: $0) } ?? "amqp://guest:guest@127.0.0.1:5672/%2F"
        var configuration: TutorCruncherConsumerConfiguration
        do {
            configuration = try TutorCruncherConsumerConfiguration(
                url: url, exchange: exchange, queue: queue, actions: actions.map(TutorCruncherAction.init(rawValue:)), prefetch: prefetch)
        } catch {
            throw ValidationError("\(error)")
        }
        // A watching tool: printing never fails, so no wait queues are declared for retries.
        configuration.retryPolicy.initialDelay = .zero
        let json = self.json
        let processor = TutorCruncherEventProcessor(configuration: configuration, logger: logger) { event, context in
            if json {
                write(line: Self.jsonLine(event: event, context: context))
                return
            }
            let model = event.subject?.model?.rawValue ?? "-"
            let id = event.subject?.id.map(String.init) ?? "-"
            write(line: "\(event.action)\t\(model)\t\(id)\t\(event.eventID)")
        }
        let group = ServiceGroup(services: [processor], gracefulShutdownSignals: [.sigterm, .sigint], logger: logger)
        try await group.run()
    }
}

/// Writes one line to standard output unbuffered, so a pipe sees it at once.
extension TCConsumeCommand {
    /// One message as a JSON object: what the bridge published, headers and body included.
    static func jsonLine(event: TutorCruncherEvent, context: TutorCruncherDeliveryContext) -> String {
        var headers = JSONObject()
        for (name, value) in context.headers {
            switch value {
            case .string(let text): headers[name] = .string(text)
            case .int(let number): headers[name] = .number(String(number))
            case .bool(let flag): headers[name] = .bool(flag)
            }
        }
        let line = JSONObject([
            "routing_key": .string(context.routingKey),
            "message_id": context.messageID.map(JSONValue.string) ?? .null,
            "attempt": .number(String(context.attempt)),
            "redelivered": .bool(context.redelivered),
            "headers": .object(headers),
            "body": event.raw,
        ])
        return String(decoding: JSONWriter.bytes(.object(line)), as: UTF8.self)
    }
}

private func write(line: String) {
    let bytes = Array((line + "\n").utf8)
    _ = bytes.withUnsafeBytes { Glibc.write(STDOUT_FILENO, $0.baseAddress, $0.count) }
}
