import ArgumentParser
import Logging
import ServiceLifecycle
import UnixSignals
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
        let processor = TutorCruncherEventProcessor(configuration: configuration, logger: logger) { event in
            let model = event.subject?.model?.rawValue ?? "-"
            let id = event.subject?.id.map(String.init) ?? "-"
            write(line: "\(event.action)\t\(model)\t\(id)\t\(event.eventID)")
        }
        let group = ServiceGroup(services: [processor], gracefulShutdownSignals: [.sigterm, .sigint], logger: logger)
        try await group.run()
    }
}

/// Writes one line to standard output unbuffered, so a pipe sees it at once.
private func write(line: String) {
    let bytes = Array((line + "\n").utf8)
    _ = bytes.withUnsafeBytes { Glibc.write(STDOUT_FILENO, $0.baseAddress, $0.count) }
}
