import DequeModule
import Logging
import ServiceLifecycle
import Synchronization

/// Configuration of an ``AMQPConsumer``.
public struct AMQPConsumerConfiguration: Sendable {
    public var connection: AMQPConnectionConfiguration
    /// Exchanges declared (idempotently) on every connect, before the queues.
    public var exchanges: [AMQPExchangeDeclaration]
    /// Queues declared on every connect, in order, with their bindings (dead-letter queues first).
    public var queues: [AMQPQueueDeclaration]
    /// The queue to consume from (normally one of `queues`).
    public var queue: String
    /// Most unacknowledged deliveries the broker sends at once (`basic.qos`; default 20).
    public var prefetch: UInt16
    /// Delay between reconnect attempts.
    public var reconnectBackoff: AMQPBackoff
    /// On shutdown, how long to wait for in-flight deliveries to be settled (default 30 s).
    public var shutdownTimeout: Duration

    public init(
        connection: AMQPConnectionConfiguration,
        exchanges: [AMQPExchangeDeclaration] = [],
        queues: [AMQPQueueDeclaration] = [],
        queue: String,
        prefetch: UInt16 = 20,
        reconnectBackoff: AMQPBackoff = AMQPBackoff(),
        shutdownTimeout: Duration = .seconds(30)
    ) {
        self.connection = connection
        self.exchanges = exchanges
        self.queues = queues
        self.queue = queue
        self.prefetch = prefetch
        self.reconnectBackoff = reconnectBackoff
        self.shutdownTimeout = shutdownTimeout
    }
}

/// A message delivered to an ``AMQPConsumer``. Settle it exactly once with ``ack()``,
/// ``nack(requeue:)``, ``reject()`` or ``republishThenAck(_:)``.
///
/// Settling after the connection broke throws `.connectionLost`: the broker has already
/// requeued the message and will deliver it again (with `redelivered` set).
public struct AMQPDelivery: Sendable {
    public let message: AMQPInboundMessage
    let deliveryTag: UInt64
    let generation: UInt64
    let consumer: AMQPConsumer

    /// Acknowledges: the broker forgets the message.
    public func ack() async throws(AMQPError) {
        try await consumer.settle(.ack, deliveryTag: deliveryTag, generation: generation)
    }

    /// Negatively acknowledges: requeued, or dead-lettered (if the queue has a dead-letter exchange)
    /// or dropped when `requeue` is false.
    public func nack(requeue: Bool) async throws(AMQPError) {
        try await consumer.settle(.nack(requeue: requeue), deliveryTag: deliveryTag, generation: generation)
    }

    /// Rejects without requeueing (dead-lettered when the queue has a dead-letter exchange).
    public func reject() async throws(AMQPError) {
        try await nack(requeue: false)
    }

    /// Publishes `message` (e.g. a copy with an error header to a dead-letter queue), waits for the
    /// broker's confirm, then acknowledges this delivery. If the publish is not confirmed the
    /// delivery is left unacknowledged and the error is thrown.
    public func republishThenAck(_ message: AMQPOutboundMessage) async throws(AMQPError) {
        try await consumer.settle(.republishThenAck(message), deliveryTag: deliveryTag, generation: generation)
    }
}

/// Consumes one queue with manual acknowledgements.
///
/// Threading: one dedicated OS thread owns the rabbitmq-c connection; deliveries are handed out
/// through ``deliveries`` (an `AsyncSequence`) and settled from any task. The owner thread keeps
/// heartbeats going while idle, and after a broker restart or network break reconnects with
/// backoff, redeclares the topology and resumes; unsettled deliveries of the broken connection are
/// redelivered by the broker.
///
/// Lifecycle: a `Service`. On graceful shutdown it cancels the subscription (no new deliveries),
/// finishes ``deliveries``, waits up to `shutdownTimeout` for in-flight deliveries to be settled,
/// then closes; anything unsettled is requeued by the broker.
public final class AMQPConsumer: Service, Sendable {
    private let configuration: AMQPConsumerConfiguration
    private let logger: Logger
    private let shared: Mutex<SharedState>
    private let wakeup = Wakeup()
    private let lifecycle = OwnerLifecycle()
    private let stream: AsyncStream<AMQPDelivery>
    private let streamContinuation: AsyncStream<AMQPDelivery>.Continuation

    enum Settlement: Sendable {
        case ack
        case nack(requeue: Bool)
        case republishThenAck(AMQPOutboundMessage)
    }

    struct SettleCommand: Sendable {
        let settlement: Settlement
        let deliveryTag: UInt64
        let generation: UInt64
        let continuation: CheckedContinuation<Result<Void, AMQPError>, Never>
    }

    private struct SharedState {
        var commands: Deque<SettleCommand> = []
        var connectionState: AMQPConnectionState = .connecting
        var stopRequested = false
    }

    public init(configuration: AMQPConsumerConfiguration, logger: Logger) {
        self.configuration = configuration
        self.logger = logger
        self.shared = Mutex(SharedState())
        (self.stream, self.streamContinuation) = AsyncStream.makeStream(of: AMQPDelivery.self)
    }

    /// Deliveries in arrival order, across reconnects. Finishes when the consumer stops.
    /// Iterate it from one task.
    public var deliveries: AsyncStream<AMQPDelivery> { stream }

    /// The current connection state. Safe from any thread.
    public var state: AMQPConnectionState { shared.withLock { $0.connectionState } }

    /// Starts the owner thread and runs until graceful shutdown or cancellation.
    public func run() async throws {
        lifecycle.markStarted("AMQPConsumer")
        let loop = ConsumerLoop(configuration: configuration, logger: logger, consumer: self)
        OwnerThread.spawn(name: "amqp-consumer") { loop.run() }
        await lifecycle.waitUntilFinished { self.requestStop() }
    }

    /// Begins shutdown (see the type's lifecycle notes). Safe from any thread; idempotent.
    public func requestStop() {
        shared.withLock { $0.stopRequested = true }
        wakeup.signal()
    }

    func settle(_ settlement: Settlement, deliveryTag: UInt64, generation: UInt64) async throws(AMQPError) {
        let result = await withCheckedContinuation { (continuation: CheckedContinuation<Result<Void, AMQPError>, Never>) in
            let rejected = shared.withLock { state in
                if lifecycle.isFinished { return true }
                state.commands.append(
                    SettleCommand(settlement: settlement, deliveryTag: deliveryTag, generation: generation, continuation: continuation))
                return false
            }
            if rejected {
                continuation.resume(returning: .failure(AMQPError(.connectionLost, "consumer closed; the message will be redelivered")))
            } else {
                wakeup.signal()
            }
        }
        try result.get()
    }

    // MARK: Owner-thread interface

    fileprivate var wakeupHandle: Wakeup { wakeup }

    fileprivate func takeCommands() -> (Deque<SettleCommand>, stopRequested: Bool) {
        shared.withLock { state in
            defer { state.commands.removeAll(keepingCapacity: true) }
            return (state.commands, state.stopRequested)
        }
    }

    fileprivate func setState(_ newState: AMQPConnectionState) {
        shared.withLock { $0.connectionState = newState }
    }

    fileprivate func yield(_ delivery: AMQPDelivery) {
        streamContinuation.yield(delivery)
    }

    fileprivate func finishDeliveries() {
        streamContinuation.finish()
    }

    fileprivate func markFinished() {
        streamContinuation.finish()
        // Finish first: a settle checks `isFinished` under the lock, so anything it appends before this
        // point is in `commands` below, and anything after is rejected by itself. None is left waiting.
        lifecycle.finish()
        let leftovers = shared.withLock { state in
            state.connectionState = .closed
            defer { state.commands.removeAll() }
            return state.commands
        }
        for command in leftovers {
            command.continuation.resume(returning: .failure(AMQPError(.connectionLost, "consumer closed; the message will be redelivered")))
        }
    }
}

/// The consumer's owner-thread loop.
private final class ConsumerLoop: @unchecked Sendable {
    // @unchecked: after `spawn`, only the owner thread touches this object.
    private let configuration: AMQPConsumerConfiguration
    private var logger: Logger
    private unowned(unsafe) let consumer: AMQPConsumer
    private let clock = ContinuousClock()
    private var generation: UInt64 = 0
    /// Deliveries handed out on the current connection and not yet settled.
    private var unsettled: Set<UInt64> = []
    /// Republished messages waiting for their confirm: publish tag -> (delivery to ack, caller).
    private var pendingRepublish = ConfirmLedger<(deliveryTag: UInt64, continuation: CheckedContinuation<Result<Void, AMQPError>, Never>)>()
    private var stopDeadline: ContinuousClock.Instant?
    private var cancelled = false
    private let consumerTag = "tc-consumer-\(UInt64.random(in: 0...UInt64.max))"

    init(configuration: AMQPConsumerConfiguration, logger: Logger, consumer: AMQPConsumer) {
        self.configuration = configuration
        self.logger = logger
        self.consumer = consumer
        self.logger[metadataKey: "amqp.queue"] = "\(configuration.queue)"
    }

    func run() {
        let supervisor = ConnectionSupervisor(
            connection: configuration.connection, backoff: configuration.reconnectBackoff, wakeup: consumer.wakeupHandle,
            logger: logger, setState: consumer.setState)
        supervisor.run(
            shouldStop: {
                let (commands, stopRequested) = consumer.takeCommands()
                failStale(commands)
                return stopRequested
            },
            prepare: { (connection: AMQPConnection) throws(AMQPError) in
                for exchange in configuration.exchanges { try connection.declare(exchange) }
                for queue in configuration.queues { try connection.declare(queue) }
                try connection.enablePublisherConfirms()
                try connection.setPrefetch(configuration.prefetch)
                try connection.consume(queue: configuration.queue, consumerTag: consumerTag)
            },
            connected: {
                generation += 1
                unsettled.removeAll()
            },
            serve: { serve($0) },
            lost: { failRepublishes($0) })
        logger.info("consumer stopped")
        consumer.markFinished()
    }

    private func serve(_ connection: AMQPConnection) -> ServeOutcome {
        while true {
            let (commands, stopRequested) = consumer.takeCommands()
            do {
                for command in commands { try apply(command, on: connection) }
                if stopRequested, !cancelled {
                    cancelled = true
                    stopDeadline = clock.now.advanced(by: configuration.shutdownTimeout)
                    // No new deliveries; any already on the wire are not handed out and are requeued
                    // by the broker when the connection closes.
                    consumer.finishDeliveries()
                    try connection.cancel(consumerTag: consumerTag)
                }
                while let event = try connection.nextEvent(timeout: .zero) {
                    switch event {
                    case .delivery(let tag, let message):
                        if cancelled { continue }  // not handed out: requeued on close
                        unsettled.insert(tag)
                        consumer.yield(
                            AMQPDelivery(message: message, deliveryTag: tag, generation: generation, consumer: consumer))
                    case .ack(let tag, let multiple):
                        try confirmRepublish(upTo: tag, multiple: multiple, success: true, on: connection)
                    case .nack(let tag, let multiple):
                        try confirmRepublish(upTo: tag, multiple: multiple, success: false, on: connection)
                    case .consumerCancelled:
                        return .lost(AMQPError(.channelClosed, "broker cancelled the subscription (queue deleted?)"))
                    case .returned, .blocked, .unblocked:
                        break
                    }
                }
            } catch {
                return .lost(error)
            }
            if cancelled {
                if unsettled.isEmpty && pendingRepublish.isEmpty { return .stopped }
                if let stopDeadline, clock.now >= stopDeadline {
                    logger.warning("shutdown deadline passed; unsettled deliveries will be redelivered", metadata: ["unsettled": "\(unsettled.count)"])
                    return .stopped
                }
            }
            if connection.hasBufferedInput { continue }
            var timeout = Duration.seconds(1)
            if let stopDeadline { timeout = min(timeout, max(.zero, stopDeadline - clock.now)) }
            consumer.wakeupHandle.wait(socket: connection.fileDescriptor, timeout: timeout)
        }
    }

    private func apply(_ command: AMQPConsumer.SettleCommand, on connection: AMQPConnection) throws(AMQPError) {
        guard command.generation == generation, unsettled.contains(command.deliveryTag) else {
            command.continuation.resume(
                returning: .failure(AMQPError(.connectionLost, "delivery belongs to a broken connection or was already settled; it will be redelivered")))
            return
        }
        switch command.settlement {
        case .ack:
            unsettled.remove(command.deliveryTag)
            try connection.ack(command.deliveryTag)
            command.continuation.resume(returning: .success(()))
        case .nack(let requeue):
            unsettled.remove(command.deliveryTag)
            try connection.nack(command.deliveryTag, requeue: requeue)
            command.continuation.resume(returning: .success(()))
        case .republishThenAck(let message):
            try connection.publish(message)
            pendingRepublish.register((command.deliveryTag, command.continuation))
        }
    }

    private func confirmRepublish(upTo tag: UInt64, multiple: Bool, success: Bool, on connection: AMQPConnection) throws(AMQPError) {
        for pending in pendingRepublish.settle(upTo: tag, multiple: multiple) {
            if success {
                unsettled.remove(pending.deliveryTag)
                try connection.ack(pending.deliveryTag)
                pending.continuation.resume(returning: .success(()))
            } else {
                pending.continuation.resume(returning: .failure(AMQPError(.nacked, "broker rejected the republished message")))
            }
        }
    }

    private func failRepublishes(_ error: AMQPError) {
        for pending in pendingRepublish.reset() { pending.continuation.resume(returning: .failure(error)) }
        unsettled.removeAll()
    }

    private func failStale(_ commands: Deque<AMQPConsumer.SettleCommand>) {
        for command in commands {
            command.continuation.resume(
                returning: .failure(AMQPError(.connectionLost, "connection broke before settling; the message will be redelivered")))
        }
    }
}
