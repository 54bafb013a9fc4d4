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
    /// How long ``AMQPDelivery/republishThenAck(_:)`` may take: waiting while the broker blocks
    /// publishing (`connection.blocked`), then for the broker's confirm (default 5 s). It fails with
    /// `.blocked` or `.confirmTimeout` after that, leaving the delivery unacknowledged. Also the limit
    /// for one socket write: a write stuck longer aborts the connection (which then reconnects).
    public var confirmTimeout: Duration

    public init(
        connection: AMQPConnectionConfiguration,
        exchanges: [AMQPExchangeDeclaration] = [],
        queues: [AMQPQueueDeclaration] = [],
        queue: String,
        prefetch: UInt16 = 20,
        reconnectBackoff: AMQPBackoff = AMQPBackoff(),
        shutdownTimeout: Duration = .seconds(30),
        confirmTimeout: Duration = .seconds(5)
    ) {
        self.connection = connection
        self.exchanges = exchanges
        self.queues = queues
        self.queue = queue
        self.prefetch = prefetch
        self.reconnectBackoff = reconnectBackoff
        self.shutdownTimeout = shutdownTimeout
        self.confirmTimeout = confirmTimeout
    }
}

/// A message delivered to an ``AMQPConsumer``. Settle it exactly once with ``ack()``,
/// ``nack(requeue:)``, ``reject()`` or ``republishThenAck(_:)``.
///
/// Every settle call returns or throws, always: when the connection breaks while the call is
/// queued or being written, it throws `.connectionLost` (the broker requeues the message and
/// delivers it again with `redelivered` set); after shutdown it throws `.connectionLost` too; and
/// should the connection's owner thread not answer within the consumer's `confirmTimeout` plus one
/// second (a socket write stuck on a broker that stopped reading), it throws `.confirmTimeout`
/// (outcome unknown). Safe to call from any task.
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
    /// delivery is left unacknowledged and the error is thrown: `.blocked` when the broker kept
    /// publishing blocked for the whole `confirmTimeout`, `.confirmTimeout`, `.nacked`,
    /// `.unencodable` (nothing sent), or `.connectionLost`. The caller still owns the delivery then
    /// and may settle it otherwise (e.g. ``nack(requeue:)``).
    public func republishThenAck(_ message: AMQPOutboundMessage) async throws(AMQPError) {
        try await consumer.settle(.republishThenAck(message), deliveryTag: deliveryTag, generation: generation)
    }
}

/// Test seams; production code never sets them. Both run on the owner thread and may block it.
struct AMQPConsumerHooks: Sendable {
    /// Called at the top of every serve iteration, before the queued settle commands are taken.
    var beforeTakingCommands: (@Sendable () -> Void)?
    /// Called when the broker has confirmed republished messages, before their originals are acknowledged.
    var beforeAckingRepublished: (@Sendable () -> Void)?

    init(beforeTakingCommands: (@Sendable () -> Void)? = nil, beforeAckingRepublished: (@Sendable () -> Void)? = nil) {
        self.beforeTakingCommands = beforeTakingCommands
        self.beforeAckingRepublished = beforeAckingRepublished
    }
}

/// Consumes one queue with manual acknowledgements.
///
/// Threading: one dedicated OS thread owns the rabbitmq-c connection; deliveries are handed out
/// through ``deliveries`` (an `AsyncSequence`) and settled from any task. The owner thread keeps
/// heartbeats going while idle, and after a broker restart or network break reconnects with
/// backoff, redeclares the topology and resumes; unsettled deliveries of the broken connection are
/// redelivered by the broker. While the broker blocks publishing (`connection.blocked`, a resource
/// alarm) acknowledgements still flow; republishes wait for the unblock up to `confirmTimeout`.
///
/// Errors: settle calls never hang (see ``AMQPDelivery``). When a write fails, the command being
/// written and every command taken with it fail with that error, and the consumer reconnects.
///
/// Lifecycle: a `Service`. On graceful shutdown it cancels the subscription (no new deliveries),
/// finishes ``deliveries``, waits up to `shutdownTimeout` for in-flight deliveries to be settled,
/// then closes; anything unsettled is requeued by the broker, and settle calls still waiting fail.
public final class AMQPConsumer: Service, Sendable {
    private let configuration: AMQPConsumerConfiguration
    private let logger: Logger
    private let shared: Mutex<SharedState>
    /// Brackets the owner thread's socket writes for the stall watchdog.
    fileprivate let writes = WriteWatchdog()
    private let wakeup = Wakeup()
    private let lifecycle = OwnerLifecycle()
    private let stream: AsyncStream<AMQPDelivery>
    private let streamContinuation: AsyncStream<AMQPDelivery>.Continuation
    let hooks: AMQPConsumerHooks

    enum Settlement: Sendable {
        case ack
        case nack(requeue: Bool)
        case republishThenAck(AMQPOutboundMessage)
    }

    struct SettleCommand: Sendable {
        let settlement: Settlement
        let deliveryTag: UInt64
        let generation: UInt64
        let result: SettleResult
    }

    private struct SharedState {
        var commands: Deque<SettleCommand> = []
        var connectionState: AMQPConnectionState = .connecting
        var stopRequested = false
    }

    public convenience init(configuration: AMQPConsumerConfiguration, logger: Logger) {
        self.init(configuration: configuration, logger: logger, hooks: AMQPConsumerHooks())
    }

    init(configuration: AMQPConsumerConfiguration, logger: Logger, hooks: AMQPConsumerHooks) {
        self.configuration = configuration
        self.logger = logger
        self.hooks = hooks
        self.shared = Mutex(SharedState())
        (self.stream, self.streamContinuation) = AsyncStream.makeStream(of: AMQPDelivery.self)
    }

    /// Deliveries in arrival order, across reconnects. Finishes when the consumer stops.
    /// Iterate it from one task.
    public var deliveries: AsyncStream<AMQPDelivery> { stream }

    /// The current connection state (`.blocked` while the broker blocks publishing). Safe from any thread.
    public var state: AMQPConnectionState { shared.withLock { $0.connectionState } }

    /// Starts the owner thread and runs until graceful shutdown or cancellation.
    public func run() async throws {
        lifecycle.markStarted("AMQPConsumer")
        let loop = ConsumerLoop(configuration: configuration, logger: logger, consumer: self)
        OwnerThread.spawn(name: "amqp-consumer") { loop.run() }
        let watchdog = Task { await self.writes.run(limit: self.configuration.confirmTimeout, logger: self.logger) }
        defer { watchdog.cancel() }
        await lifecycle.waitUntilFinished { self.requestStop() }
    }

    /// Begins shutdown (see the type's lifecycle notes). Safe from any thread; idempotent.
    public func requestStop() {
        shared.withLock { $0.stopRequested = true }
        wakeup.signal()
    }

    /// Queues a settle command for the owner thread and waits for its outcome, at most
    /// `confirmTimeout` plus one second (the owner enforces `confirmTimeout` itself; this is the
    /// backstop for an owner stuck in a socket write until the watchdog aborts it).
    func settle(_ settlement: Settlement, deliveryTag: UInt64, generation: UInt64) async throws(AMQPError) {
        let result = SettleResult()
        let limit = configuration.confirmTimeout + .seconds(1)
        let timer = Task {
            try? await Task.sleep(for: limit)
            if !Task.isCancelled {
                result.resume(.failure(AMQPError(.confirmTimeout, "no outcome within \(limit); the message may be redelivered")))
            }
        }
        defer { timer.cancel() }
        let outcome = await withCheckedContinuation { (continuation: CheckedContinuation<Result<Void, AMQPError>, Never>) in
            result.install(continuation)
            let rejected = shared.withLock { state in
                if lifecycle.isFinished { return true }
                state.commands.append(SettleCommand(settlement: settlement, deliveryTag: deliveryTag, generation: generation, result: result))
                return false
            }
            if rejected {
                result.resume(.failure(AMQPError(.connectionLost, "consumer closed; the message will be redelivered")))
            } else {
                wakeup.signal()
            }
        }
        try outcome.get()
    }

    // MARK: Owner-thread interface

    fileprivate var wakeupHandle: Wakeup { wakeup }

    /// Settle commands queued for the owner thread and not yet taken (for tests).
    var queuedCommandCount: Int { shared.withLock { $0.commands.count } }

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
            command.result.resume(.failure(AMQPError(.connectionLost, "consumer closed; the message will be redelivered")))
        }
    }
}

/// The outcome of one settle call, resumed exactly once by whichever comes first: the owner
/// thread or the caller's backstop timer. Thread-safe.
final class SettleResult: Sendable {
    private let state = Mutex<(continuation: CheckedContinuation<Result<Void, AMQPError>, Never>?, early: Result<Void, AMQPError>?, done: Bool)>((nil, nil, false))

    func install(_ continuation: CheckedContinuation<Result<Void, AMQPError>, Never>) {
        let early: Result<Void, AMQPError>? = state.withLock { state in
            if let early = state.early {
                state.early = nil
                return early
            }
            state.continuation = continuation
            return nil
        }
        if let early { continuation.resume(returning: early) }
    }

    /// Resumes the caller; later calls are ignored.
    func resume(_ result: Result<Void, AMQPError>) {
        let continuation: CheckedContinuation<Result<Void, AMQPError>, Never>? = state.withLock { state in
            guard !state.done else { return nil }
            state.done = true
            if let continuation = state.continuation {
                state.continuation = nil
                return continuation
            }
            state.early = result
            return nil
        }
        continuation?.resume(returning: result)
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
    private var pendingRepublish = ConfirmLedger<(deliveryTag: UInt64, result: SettleResult)>()
    /// Confirm deadlines of the republishes in `pendingRepublish` (entries already confirmed are
    /// dropped when their deadline is checked).
    private var republishDeadlines: [(tag: UInt64, deadline: ContinuousClock.Instant)] = []
    /// Republishes taken while the broker blocks publishing, with their deadlines.
    private var heldRepublishes: Deque<(command: AMQPConsumer.SettleCommand, deadline: ContinuousClock.Instant)> = []
    /// The broker sent `connection.blocked` on this connection and no `connection.unblocked` yet.
    private var blocked = false
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
                fail(commands, AMQPError(.connectionLost, "connection broke before settling; the message will be redelivered"))
                return stopRequested
            },
            prepare: { (connection: AMQPConnection) throws(AMQPError) in
                for exchange in configuration.exchanges {
                    if case .usedExisting(let reason) = try connection.declare(exchange) {
                        logger.debug("using the existing exchange as it is", metadata: ["exchange": "\(exchange.name)", "reason": "\(reason)"])
                    }
                }
                for queue in configuration.queues {
                    if case .usedExisting(let reason) = try connection.declare(queue) {
                        logger.warning("using the existing queue as it is", metadata: ["queue": "\(queue.name)", "reason": "\(reason)"])
                    }
                }
                try connection.enablePublisherConfirms()
                try connection.setPrefetch(configuration.prefetch)
                try connection.consume(queue: configuration.queue, consumerTag: consumerTag)
            },
            connected: {
                generation += 1
                unsettled.removeAll()
                blocked = false
            },
            serve: { serve($0) },
            lost: { failOutstanding($0) })
        failOutstanding(AMQPError(.shutdown, "consumer stopped before the broker confirmed the republish; the message will be redelivered"))
        logger.info("consumer stopped")
        consumer.markFinished()
    }

    private func serve(_ connection: AMQPConnection) -> ServeOutcome {
        while true {
            consumer.hooks.beforeTakingCommands?()
            let (commands, stopRequested) = consumer.takeCommands()
            var remaining = commands
            // Republishes held while blocked go first once the broker unblocks.
            if !blocked, !heldRepublishes.isEmpty {
                remaining = Deque(heldRepublishes.map { $0.command }) + remaining
                heldRepublishes.removeAll()
            }
            while let command = remaining.popFirst() {
                do {
                    try apply(command, on: connection)
                } catch {
                    // `apply` resumed `command`; the rest were taken with it and must not be dropped.
                    fail(
                        remaining,
                        AMQPError(.connectionLost, "connection broke (\(error.message)); the message will be redelivered", replyCode: error.replyCode))
                    return .lost(error)
                }
            }
            do {
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
                    case .blocked(let reason):
                        blocked = true
                        consumer.setState(.blocked(reason: reason))
                        logger.warning("broker blocked publishing; republishes wait", metadata: ["reason": "\(reason)"])
                    case .unblocked:
                        blocked = false
                        consumer.setState(.connected)
                        logger.info("broker unblocked publishing")
                    case .returned:
                        break
                    }
                }
            } catch {
                return .lost(error)
            }
            let now = clock.now
            let earliestDeadline = expireRepublishes(now: now)
            if blocked == false, !heldRepublishes.isEmpty { continue }  // unblocked just now: write them
            if cancelled {
                if unsettled.isEmpty && pendingRepublish.isEmpty && heldRepublishes.isEmpty { return .stopped }
                if let stopDeadline, now >= stopDeadline {
                    logger.warning("shutdown deadline passed; unsettled deliveries will be redelivered", metadata: ["unsettled": "\(unsettled.count)"])
                    return .stopped
                }
            }
            if connection.hasBufferedInput { continue }
            var timeout = Duration.seconds(1)
            if let earliestDeadline { timeout = min(timeout, earliestDeadline - now) }
            if let stopDeadline { timeout = min(timeout, stopDeadline - now) }
            consumer.wakeupHandle.wait(socket: connection.fileDescriptor, timeout: max(.zero, timeout))
        }
    }

    /// Applies one command. On a write failure it resumes the command's caller with the error and
    /// rethrows (the connection is then unusable).
    private func apply(_ command: AMQPConsumer.SettleCommand, on connection: AMQPConnection) throws(AMQPError) {
        guard command.generation == generation, unsettled.contains(command.deliveryTag) else {
            command.result.resume(
                .failure(AMQPError(.connectionLost, "delivery belongs to a broken connection or was already settled; it will be redelivered")))
            return
        }
        switch command.settlement {
        case .ack:
            unsettled.remove(command.deliveryTag)
            try write(on: connection, for: command.result) { () throws(AMQPError) in try connection.ack(command.deliveryTag) }
            command.result.resume(.success(()))
        case .nack(let requeue):
            unsettled.remove(command.deliveryTag)
            try write(on: connection, for: command.result) { () throws(AMQPError) in
                try connection.nack(command.deliveryTag, requeue: requeue)
            }
            command.result.resume(.success(()))
        case .republishThenAck(let message):
            if let problem = message.encodingProblem(frameSize: connection.frameSize) {
                command.result.resume(.failure(AMQPError(.unencodable, problem)))
                return
            }
            let deadline = clock.now.advanced(by: configuration.confirmTimeout)
            if blocked {
                heldRepublishes.append((command, deadline))
                return
            }
            try write(on: connection, for: command.result) { () throws(AMQPError) in try connection.publish(message) }
            let tag = pendingRepublish.register((command.deliveryTag, command.result))
            republishDeadlines.append((tag, deadline))
        }
    }

    /// Runs one socket write under the stall watchdog; on failure resumes `result` and rethrows.
    private func write(on connection: AMQPConnection, for result: SettleResult, _ body: () throws(AMQPError) -> Void) throws(AMQPError) {
        consumer.writes.begin(socket: connection.fileDescriptor)
        defer { consumer.writes.end() }
        do {
            try body()
        } catch {
            result.resume(.failure(AMQPError(error.kind, "\(error.message); the message will be redelivered", replyCode: error.replyCode)))
            throw error
        }
    }

    private func confirmRepublish(upTo tag: UInt64, multiple: Bool, success: Bool, on connection: AMQPConnection) throws(AMQPError) {
        let settled = pendingRepublish.settle(upTo: tag, multiple: multiple)
        if success, !settled.isEmpty { consumer.hooks.beforeAckingRepublished?() }
        for (index, pending) in settled.enumerated() {
            guard success else {
                pending.result.resume(.failure(AMQPError(.nacked, "broker rejected the republished message")))
                continue
            }
            unsettled.remove(pending.deliveryTag)
            consumer.writes.begin(socket: connection.fileDescriptor)
            defer { consumer.writes.end() }
            do {
                try connection.ack(pending.deliveryTag)
            } catch {
                // This one and the rest confirmed with it: republished, but the original cannot be
                // acknowledged any more, so the broker redelivers it (at least once).
                let failure = AMQPError(
                    error.kind, "republished, but acknowledging the original failed (\(error.message)); it will be redelivered",
                    replyCode: error.replyCode)
                for rest in settled[index...] { rest.result.resume(.failure(failure)) }
                throw error
            }
            pending.result.resume(.success(()))
        }
    }

    /// Fails republishes past their deadline; returns the earliest deadline still pending.
    private func expireRepublishes(now: ContinuousClock.Instant) -> ContinuousClock.Instant? {
        var earliest: ContinuousClock.Instant?
        while let first = heldRepublishes.first, first.deadline <= now {
            heldRepublishes.removeFirst()
            first.command.result.resume(
                .failure(AMQPError(.blocked, "broker kept publishing blocked for \(configuration.confirmTimeout); nothing was republished")))
        }
        if let first = heldRepublishes.first { earliest = first.deadline }
        republishDeadlines.removeAll { entry in
            if entry.deadline > now { return false }
            for pending in pendingRepublish.settle(upTo: entry.tag, multiple: false) {
                pending.result.resume(
                    .failure(AMQPError(.confirmTimeout, "no confirm for the republished message within \(configuration.confirmTimeout)")))
            }
            return true
        }
        if pendingRepublish.isEmpty {
            republishDeadlines.removeAll()
        } else if let soonest = republishDeadlines.map(\.deadline).min() {
            earliest = min(earliest ?? soonest, soonest)
        }
        return earliest
    }

    /// The connection broke or the consumer stopped: fail everything waiting on it.
    private func failOutstanding(_ error: AMQPError) {
        for pending in pendingRepublish.reset() { pending.result.resume(.failure(error)) }
        for held in heldRepublishes { held.command.result.resume(.failure(error)) }
        heldRepublishes.removeAll()
        republishDeadlines.removeAll()
        unsettled.removeAll()
        blocked = false
    }

    private func fail(_ commands: Deque<AMQPConsumer.SettleCommand>, _ error: AMQPError) {
        for command in commands { command.result.resume(.failure(error)) }
    }
}
