import DequeModule
import Logging
import ServiceLifecycle
import Synchronization

/// Configuration of an ``AMQPConsumer``.
public struct AMQPConsumerConfiguration: Sendable {
    /// The preferred broker.
    public var connection: AMQPConnectionConfiguration
    /// Further brokers (a cluster's other nodes, or independent brokers), tried in order when
    /// `connection` cannot be reached; every reconnect starts again from `connection`.
    public var failoverConnections: [AMQPConnectionConfiguration] = []
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
    /// On shutdown, how long to wait for in-flight deliveries to be settled (default 30 s). A
    /// republish-then-ack already under way then may finish within `confirmTimeout` more, so a copy
    /// the broker is about to confirm is not followed by a redelivery of its original; one called
    /// after the deadline fails with `.shutdown`. Shutdown takes at most `shutdownTimeout + confirmTimeout`.
    public var shutdownTimeout: Duration
    /// How long ``AMQPDelivery/republishThenAck(_:)`` may take: waiting while the broker blocks
    /// publishing (`connection.blocked`), then for the broker's confirm (default 5 s). It fails with
    /// `.blocked` or `.confirmTimeout` after that, leaving the delivery unacknowledged. Also the limit
    /// for one socket write: a write stuck longer aborts the connection (which then reconnects).
    public var confirmTimeout: Duration
    /// Stop, and throw from ``AMQPConsumer/run()``, when every broker refuses the connection or the
    /// declarations for a reason retrying will not change (``AMQPError/isPermanentRefusal``: wrong
    /// credentials or permissions, a missing virtual host, a queue declared differently before);
    /// default `false`: retry with backoff, reporting `.misconfigured`.
    public var stopOnPermanentRefusal = false

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
/// should the connection's owner thread not answer within twice the consumer's `confirmTimeout` plus
/// one second (a socket write stuck on a broker that stopped reading), it throws `.confirmTimeout`
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

    /// The connection this delivery came on has broken (or the consumer has stopped): settling it can
    /// only fail with `.connectionLost`, and the broker delivers the message again. Work not yet
    /// started on it is better skipped. Safe from any thread.
    public var isStale: Bool { !consumer.isLive(generation: generation) }

    /// Publishes `message` (e.g. a copy with an error header to a dead-letter queue), waits for the
    /// broker's confirm, then acknowledges this delivery. If the publish is not confirmed the
    /// delivery is left unacknowledged and the error is thrown: `.blocked` when the broker kept
    /// publishing blocked for the whole `confirmTimeout`, `.confirmTimeout`, `.nacked` (with
    /// ``AMQPError/isUnroutable`` when a `mandatory` copy reached no queue), `.unencodable` (nothing
    /// sent), or `.connectionLost`. The caller still owns the delivery then
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
/// finishes ``deliveries``, waits up to `shutdownTimeout` for in-flight deliveries to be settled
/// (and then up to `confirmTimeout` more for a republish already under way), then closes; anything
/// unsettled is requeued by the broker, and settle calls still waiting fail.
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
    /// The generation of the connection deliveries are served on now; 0 while there is none.
    /// Written by the owner thread only.
    private let liveGeneration = Atomic<UInt64>(0)
    /// Deliveries handed to the stream, and those ``deliveries`` dropped because their connection
    /// had broken (for tests).
    let yieldedCount = Atomic<Int>(0)
    let staleDropped = Atomic<Int>(0)
    let hooks: AMQPConsumerHooks

    typealias SettleCommand = ConsumerStateMachine<SettleResult>.Command
    typealias Settlement = SettleCommand.Settlement

    private struct SharedState {
        var commands: Deque<SettleCommand> = []
        var connectionState: AMQPConnectionState = .connecting
        var stopRequested = false
        /// Why the consumer gave up (``AMQPConsumerConfiguration/stopOnPermanentRefusal``).
        var refusal: AMQPError?
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
    ///
    /// A delivery still waiting here when its connection broke is dropped, not handed out: its
    /// settle calls could only fail, and the broker delivers the message again on the next
    /// connection (with `redelivered` set). So a reconnect does not run a handler twice for the
    /// deliveries it had not reached yet.
    public var deliveries: AMQPDeliveries { AMQPDeliveries(stream: stream, consumer: self) }

    /// Whether deliveries of connection `generation` can still be settled. Safe from any thread.
    func isLive(generation: UInt64) -> Bool {
        generation == liveGeneration.load(ordering: .acquiring)
    }

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
        if let refusal = failure { throw refusal }
    }

    /// The refusal the consumer gave up on (``AMQPConsumerConfiguration/stopOnPermanentRefusal``),
    /// set before ``deliveries`` finishes; `nil` otherwise. Safe from any thread.
    public var failure: AMQPError? { shared.withLock { $0.refusal } }

    /// Begins shutdown (see the type's lifecycle notes). Safe from any thread; idempotent.
    public func requestStop() {
        shared.withLock { $0.stopRequested = true }
        wakeup.signal()
    }

    /// Queues a settle command for the owner thread and waits for its outcome, at most twice
    /// `confirmTimeout` plus one second (the owner enforces its deadlines itself; this is the
    /// backstop for an owner stuck in a socket write until the watchdog aborts it).
    func settle(_ settlement: Settlement, deliveryTag: UInt64, generation: UInt64) async throws(AMQPError) {
        let result = SettleResult()
        // A republish may wait `confirmTimeout` for the broker to unblock, then as long for its confirm.
        let limit = configuration.confirmTimeout * 2 + .seconds(1)
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
                state.commands.append(SettleCommand(settlement: settlement, deliveryTag: deliveryTag, generation: generation, waiter: result))
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

    /// The owner thread serves connection `generation` from now on; 0 when it serves none.
    fileprivate func setLiveGeneration(_ generation: UInt64) {
        liveGeneration.store(generation, ordering: .releasing)
    }

    fileprivate func yield(_ delivery: AMQPDelivery) {
        yieldedCount.add(1, ordering: .relaxed)
        streamContinuation.yield(delivery)
    }

    fileprivate func finishDeliveries() {
        streamContinuation.finish()
    }

    fileprivate func markFinished(refusal: AMQPError? = nil) {
        setLiveGeneration(0)  // the connection is closed: nothing still buffered can be settled
        if let refusal { shared.withLock { $0.refusal = refusal } }
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
            command.waiter.resume(.failure(AMQPError(.connectionLost, "consumer closed; the message will be redelivered")))
        }
    }
}

/// ``AMQPConsumer/deliveries``: the deliveries of the connection being served, in arrival order,
/// across reconnects; those whose connection broke while they waited are dropped (see there).
public struct AMQPDeliveries: AsyncSequence, Sendable {
    public typealias Element = AMQPDelivery
    public typealias Failure = Never
    let stream: AsyncStream<AMQPDelivery>
    let consumer: AMQPConsumer

    public struct AsyncIterator: AsyncIteratorProtocol {
        public typealias Failure = Never
        var base: AsyncStream<AMQPDelivery>.AsyncIterator
        let consumer: AMQPConsumer

        /// The next delivery whose connection is still served; `nil` once the consumer has stopped.
        public mutating func next(isolation actor: isolated (any Actor)?) async -> AMQPDelivery? {
            while let delivery = await base.next(isolation: actor) {
                guard delivery.isStale else { return delivery }
                consumer.staleDropped.add(1, ordering: .relaxed)
            }
            return nil
        }

        public mutating func next() async -> AMQPDelivery? { await next(isolation: nil) }
    }

    public func makeAsyncIterator() -> AsyncIterator {
        AsyncIterator(base: stream.makeAsyncIterator(), consumer: consumer)
    }
}

/// The outcome of one settle call: answered once, by the owner thread or the caller's backstop timer.
typealias SettleResult = OnceAnswer

extension OnceAnswer: SettleWaiter {
    func answer(_ result: Result<Void, AMQPError>) { resume(result) }
}

/// The consumer's owner-thread loop: connect, declare, subscribe, then drive the
/// ``ConsumerStateMachine`` with deliveries, settle calls and confirms, doing the writes it asks for.
private final class ConsumerLoop: @unchecked Sendable {
    // @unchecked: after `spawn`, only the owner thread touches this object.
    private let configuration: AMQPConsumerConfiguration
    private var logger: Logger
    private let consumer: AMQPConsumer
    private let clock = ContinuousClock()
    private var machine: ConsumerStateMachine<SettleResult>
    /// Republishes the broker held while blocked, to be taken again first after the unblock.
    private var retake: Deque<AMQPConsumer.SettleCommand> = []
    private let consumerTag = "tc-consumer-\(UInt64.random(in: 0...UInt64.max))"

    init(configuration: AMQPConsumerConfiguration, logger: Logger, consumer: AMQPConsumer) {
        self.configuration = configuration
        self.logger = logger
        self.consumer = consumer
        self.machine = ConsumerStateMachine(confirmTimeout: configuration.confirmTimeout, shutdownTimeout: configuration.shutdownTimeout)
        self.logger[metadataKey: "amqp.queue"] = "\(configuration.queue)"
    }

    func run() {
        var supervisor = ConnectionSupervisor(
            connections: [configuration.connection] + configuration.failoverConnections, backoff: configuration.reconnectBackoff, wakeup: consumer.wakeupHandle,
            logger: logger, setState: consumer.setState, client: "consumer")
        supervisor.stopOnPermanentRefusal = configuration.stopOnPermanentRefusal
        let refusal = supervisor.run(
            shouldStop: {
                let (commands, stopRequested) = consumer.takeCommands()
                fail(commands, AMQPError(.connectionLost, "connection broke before settling; the message will be redelivered"))
                return stopRequested
            },
            prepare: { (connection: AMQPConnection) throws(AMQPError) in
                try connection.declareTopology(exchanges: configuration.exchanges, queues: configuration.queues, logger: logger)
                try connection.enablePublisherConfirms()
                try connection.setPrefetch(configuration.prefetch)
                try connection.consume(queue: configuration.queue, consumerTag: consumerTag)
            },
            connected: {
                machine.connected()
                consumer.setLiveGeneration(machine.generation)
            },
            serve: { serve($0) },
            lost: { error in
                consumer.setLiveGeneration(0)
                machine.failOutstanding(error)
                fail(retake, error)
                retake.removeAll()
            })
        machine.failOutstanding(AMQPError(.shutdown, "consumer stopped before the broker confirmed the republish; the message will be redelivered"))
        logger.info("consumer stopped")
        consumer.markFinished(refusal: refusal)
    }

    private func serve(_ connection: AMQPConnection) -> ServeOutcome {
        while true {
            consumer.hooks.beforeTakingCommands?()
            let (commands, stopRequested) = consumer.takeCommands()
            var remaining = retake + commands
            retake.removeAll()
            while let command = remaining.popFirst() {
                do {
                    try apply(command, on: connection)
                } catch {
                    // `apply` answered `command`; the rest were taken with it and must not be dropped.
                    fail(
                        remaining,
                        AMQPError(.connectionLost, "connection broke (\(error.message)); the message will be redelivered", replyCode: error.replyCode))
                    return .lost(error)
                }
            }
            do {
                if stopRequested, machine.requestStop(now: clock.now) {
                    // No new deliveries; any already on the wire are not handed out and are requeued
                    // by the broker when the connection closes.
                    consumer.finishDeliveries()
                    try connection.cancel(consumerTag: consumerTag)
                }
                while let event = try connection.nextEvent(timeout: .zero) {
                    switch event {
                    case .delivery(let tag, let message):
                        guard machine.delivered(deliveryTag: tag) else { continue }
                        consumer.yield(AMQPDelivery(message: message, deliveryTag: tag, generation: machine.generation, consumer: consumer))
                    case .ack(let tag, let multiple):
                        try acknowledgeRepublished(machine.confirmed(upTo: tag, multiple: multiple, success: true), on: connection)
                    case .nack(let tag, let multiple):
                        _ = machine.confirmed(upTo: tag, multiple: multiple, success: false)
                    case .consumerCancelled:
                        return .lost(AMQPError(.channelClosed, "broker cancelled the subscription (queue deleted?)"))
                    case .blocked(let reason):
                        _ = machine.setBlocked(true)
                        consumer.setState(.blocked(reason: reason))
                        logger.warning("broker blocked publishing; republishes wait", metadata: ["reason": "\(reason)"])
                    case .unblocked:
                        retake.append(contentsOf: machine.setBlocked(false))
                        consumer.setState(.connected)
                        logger.info("broker unblocked publishing")
                    case .returned(_, _, let message):
                        machine.returnedRepublish(routingKey: message.routingKey, messageID: message.properties.messageID)
                    }
                }
            } catch {
                return .lost(error)
            }
            if !retake.isEmpty { continue }  // unblocked just now: write the held republishes
            switch machine.tick(now: clock.now) {
            case .stopped(let unsettled):
                if unsettled > 0 {
                    logger.warning("shutdown deadline passed; unsettled deliveries will be redelivered", metadata: ["unsettled": "\(unsettled)"])
                }
                return .stopped
            case .wait(let timeout):
                if connection.hasBufferedInput { continue }
                consumer.wakeupHandle.wait(socket: connection.fileDescriptor, timeout: timeout)
            }
        }
    }

    /// Applies one command. On a write failure it answers the command's caller with the error and
    /// rethrows (the connection is then unusable).
    private func apply(_ command: AMQPConsumer.SettleCommand, on connection: AMQPConnection) throws(AMQPError) {
        guard let write = machine.take(command, frameSize: connection.frameSize, now: clock.now) else { return }
        consumer.writes.begin(socket: connection.fileDescriptor)
        defer { consumer.writes.end() }
        do {
            switch write {
            case .ack(let tag): try connection.ack(tag)
            case .nack(let tag, let requeue): try connection.nack(tag, requeue: requeue)
            case .publish(let message): try connection.publish(message)
            }
        } catch {
            consumer.setLiveGeneration(0)  // before any caller hears of it: its deliveries are stale now
            command.waiter.resume(.failure(AMQPError(error.kind, "\(error.message); the message will be redelivered", replyCode: error.replyCode)))
            throw error
        }
        machine.wrote(command, now: clock.now)
    }

    /// Acknowledges the originals of confirmed republishes, answering each caller once its ack is
    /// written. If a write fails, this one and the rest confirmed with it were republished, but the
    /// originals cannot be acknowledged any more: the broker redelivers them (at least once).
    private func acknowledgeRepublished(_ confirmed: [(deliveryTag: UInt64, waiter: SettleResult)], on connection: AMQPConnection) throws(AMQPError) {
        if !confirmed.isEmpty { consumer.hooks.beforeAckingRepublished?() }
        for (index, pending) in confirmed.enumerated() {
            consumer.writes.begin(socket: connection.fileDescriptor)
            defer { consumer.writes.end() }
            do {
                try connection.ack(pending.deliveryTag)
            } catch {
                consumer.setLiveGeneration(0)  // before any caller hears of it: its deliveries are stale now
                let failure = AMQPError(
                    error.kind, "republished, but acknowledging the original failed (\(error.message)); it will be redelivered",
                    replyCode: error.replyCode)
                for rest in confirmed[index...] { rest.waiter.resume(.failure(failure)) }
                throw error
            }
            pending.waiter.resume(.success(()))
        }
    }

    private func fail(_ commands: some Sequence<AMQPConsumer.SettleCommand>, _ error: AMQPError) {
        for command in commands { command.waiter.resume(.failure(error)) }
    }
}
