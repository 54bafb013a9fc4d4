import AMQPClient
import ArgumentParser
import TutorCruncherConsumer

#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

/// `tc-consume dead-letters`: what a service's dead-letter queue holds, and putting it back.
struct DeadLettersCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "dead-letters",
        abstract: "List a service's dead-lettered events (left in place), or move them back to its queue with --requeue.",
        usage: "tc-consume dead-letters <service-queue> [--requeue] [--limit N] [--amqp-url URL]",
        discussion: """
            Each line: original routing key, message id, the error that sent it there (tab-separated).
            --requeue publishes each to the service's queue (confirmed) before removing it from the
            dead-letter queue, with its attempt count reset; the error header stays for the record.
            """)

    /// `--amqp-url` is the parent command's (given before or after `dead-letters`).
    @ParentCommand var parent: TCConsumeCommand

    @Argument(help: "The service's queue (its dead-letter queue is <queue>.dead-letter unless --dead-letter-queue).")
    var service: String

    @Option(help: "The dead-letter queue, when not <queue>.dead-letter.")
    var deadLetterQueue: String?

    @Option(help: "At most this many messages.")
    var limit = 1000

    @Flag(help: "Move them back to the service's queue.")
    var requeue = false

    func run() async throws {
        let url = parent.amqpURL ?? getenv("AMQP_URL").map { String(cString: $0) } ?? "amqp://guest:guest@127.0.0.1:5672/%2F"
        let admin: AMQPAdmin
        do {
            admin = AMQPAdmin(connection: try AMQPConnectionConfiguration(url: String(url.split(separator: ",").first ?? "")))
        } catch {
            throw ValidationError("\(error)")
        }
        let source = deadLetterQueue ?? "\(service).dead-letter"
        let limit = max(1, limit)
        guard requeue else {
            let messages = try await admin.peek(queue: source, limit: limit)
            for message in messages {
                let key = message.properties.header(ConsumerHeader.originalRoutingKey)?.stringValue ?? message.routingKey
                let error = message.properties.header(ConsumerHeader.error)?.stringValue ?? "-"
                print("\(key)\t\(message.properties.messageID ?? "-")\t\(error)")
            }
            print("\(messages.count) messages in \(source)")
            return
        }
        let target = service
        let reset: Set<String> = [ConsumerHeader.attempt, ConsumerHeader.unsettledDeliveries]
        let moved = try await admin.move(queue: source, limit: limit) { message in
            var properties = message.properties
            properties.headers = properties.headers.filter { !reset.contains($0.0) }
            properties.persistent = true
            return AMQPOutboundMessage(exchange: "", routingKey: target, properties: properties, body: message.body)
        }
        print("\(moved) messages moved from \(source) to \(target)")
    }
}

extension AMQPHeaderValue {
    var stringValue: String? {
        if case .string(let text) = self { return text }
        return nil
    }
}
