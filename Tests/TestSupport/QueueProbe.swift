import AMQPClient
import Foundation
import Logging
import Synchronization

/// A durable test queue bound to an exchange, consumed in the background; collects every message.
///
/// "Exactly these messages arrived" is checked with a sentinel: publish a last message through the
/// same path and wait for it; RabbitMQ keeps per-publisher order into a queue, so nothing that was
/// confirmed earlier can still be on its way.
public final class QueueProbe: Sendable {
    public let queue: String
    public let consumer: AMQPConsumer
    private let received = MessageLog()
    private let task: Task<Void, Never>

    /// Declares `queue` (unique per test by default) bound to `exchange` with `bindingKeys`, and starts consuming.
    public convenience init(
        node: RabbitMQNode = .shared,
        exchange: String,
        bindingKeys: [String] = ["#"],
        queue: String = "probe-\(UUID().uuidString.prefix(8))"
    ) async throws {
        try await self.init(
            node: node, queue: queue,
            // As a consumer would: use the exchange as it is, or create it as the bridge declares it.
            exchanges: [
                AMQPExchangeDeclaration(
                    name: exchange, kind: .topic, durable: true, arguments: ["alternate-exchange": .string("\(exchange).unroutable")],
                    mode: .declareIfMissing)
            ],
            queues: [
                AMQPQueueDeclaration(
                    name: queue, durable: true, arguments: ["x-expires": .int(600_000)],
                    bindings: bindingKeys.map { .init(exchange: exchange, routingKey: $0) })
            ])
    }

    /// Consumes a queue that already exists (e.g. a dead-letter queue), declaring nothing.
    public convenience init(node: RabbitMQNode = .shared, existingQueue queue: String) async throws {
        try await self.init(node: node, queue: queue, exchanges: [], queues: [])
    }

    private init(node: RabbitMQNode, queue: String, exchanges: [AMQPExchangeDeclaration], queues: [AMQPQueueDeclaration]) async throws {
        self.queue = queue
        var logger = Logger(label: "probe")
        logger.logLevel = .error  // reconnect warnings during injected outages are expected
        consumer = AMQPConsumer(
            configuration: AMQPConsumerConfiguration(
                connection: node.connection,
                exchanges: exchanges,
                queues: queues,
                queue: queue,
                prefetch: 500,
                reconnectBackoff: AMQPBackoff(initial: .milliseconds(50), maximum: .milliseconds(500)),
                shutdownTimeout: .seconds(2)),
            logger: logger)
        let consumer = self.consumer
        let received = self.received
        task = Task {
            await withTaskGroup(of: Void.self) { group in
                group.addTask { try? await consumer.run() }
                for await delivery in consumer.deliveries {
                    received.append(delivery.message)
                    try? await delivery.ack()
                }
                group.cancelAll()
            }
        }
        try await waitUntil(timeout: .seconds(30), "probe consumer to connect") { consumer.state == .connected }
    }

    public var messages: [AMQPInboundMessage] { received.all }

    /// Waits until at least `count` messages arrived; returns them all.
    @discardableResult
    public func waitForMessages(count: Int, timeout: Duration = .seconds(30)) async throws -> [AMQPInboundMessage] {
        try await waitUntil(timeout: timeout, "\(count) messages on \(queue) (have \(messages.count))") { self.messages.count >= count }
        return messages
    }

    /// Waits for a message whose routing key is `routingKey`; returns everything received before it.
    public func messages(before routingKey: String, timeout: Duration = .seconds(30)) async throws -> [AMQPInboundMessage] {
        try await waitUntil(timeout: timeout, "sentinel \(routingKey) on \(queue)") {
            self.messages.contains { $0.routingKey == routingKey }
        }
        let all = messages
        return Array(all.prefix { $0.routingKey != routingKey })
    }

    public func stop() async {
        consumer.requestStop()
        await task.value
    }
}

/// A thread-safe append-only list of received messages.
final class MessageLog: Sendable {
    private let storage = Mutex<[AMQPInboundMessage]>([])
    func append(_ message: AMQPInboundMessage) { storage.withLock { $0.append(message) } }
    var all: [AMQPInboundMessage] { storage.withLock { $0 } }
}
