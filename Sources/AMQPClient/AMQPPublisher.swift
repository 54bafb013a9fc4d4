import DequeModule
import Logging
import Metrics
import ServiceLifecycle
import Synchronization

#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

/// Configuration of an ``AMQPPublisher``.
public struct AMQPPublisherConfiguration: Sendable {
    /// The preferred broker.
    public var connection: AMQPConnectionConfiguration
    /// Further brokers (a cluster's other nodes, or independent brokers), tried in order when
    /// `connection` cannot be reached; every reconnect starts again from `connection`.
    public var failoverConnections: [AMQPConnectionConfiguration] = []
    /// Exchanges declared (idempotently) on every connect, before anything is published.
    public var exchanges: [AMQPExchangeDeclaration]
    /// Queues (with bindings) declared on every connect after the exchanges, e.g. the queue behind an
    /// alternate exchange.
    public var queues: [AMQPQueueDeclaration]
    /// How long a publish waits for the broker's confirm before failing with `.confirmTimeout`
    /// (default 5 s, well under TutorCruncher's 8 s request timeout).
    public var confirmTimeout: Duration
    /// Delay between reconnect attempts.
    public var reconnectBackoff: AMQPBackoff
    /// On shutdown, how long to wait for outstanding confirms before failing them (default 5 s).
    public var shutdownTimeout: Duration
    /// Messages written but not yet confirmed, at most. A large publish is written in steps of this
    /// size, so confirms keep flowing and a batch of any size makes steady progress (default 1024).
    public var maxUnconfirmed: Int

    public init(
        connection: AMQPConnectionConfiguration,
        exchanges: [AMQPExchangeDeclaration] = [],
        queues: [AMQPQueueDeclaration] = [],
        confirmTimeout: Duration = .seconds(5),
        reconnectBackoff: AMQPBackoff = AMQPBackoff(),
        shutdownTimeout: Duration = .seconds(5),
        maxUnconfirmed: Int = 1024
    ) {
        self.connection = connection
        self.exchanges = exchanges
        self.queues = queues
        self.confirmTimeout = confirmTimeout
        self.reconnectBackoff = reconnectBackoff
        self.shutdownTimeout = shutdownTimeout
        self.maxUnconfirmed = max(1, maxUnconfirmed)
    }
}

/// The state of a client's broker connection.
public enum AMQPConnectionState: Sendable, Equatable {
    /// Not yet started, or between reconnect attempts.
    case connecting
    /// Connected, topology declared, ready.
    case connected
    /// Connected, but the broker asked publishers to pause (resource alarm).
    case blocked(reason: String)
    /// The last attempt failed or the connection broke; retrying with backoff.
    case disconnected(reason: String)
    /// The broker refused this client's configuration (credentials, permissions, virtual host, a
    /// declaration it cannot accept). Still retrying with backoff, but this does not clear by
    /// itself: someone has to change the broker or the configuration.
    case misconfigured(reason: String)
    /// Shut down; will not reconnect.
    case closed
}

/// Publishes messages to RabbitMQ with publisher confirms, pipelined across any number of
/// concurrent callers.
///
/// Threading: one dedicated OS thread owns the rabbitmq-c connection; ``publish(_:)`` may be called
/// from any task and enqueues work and waits, or, when the owner is idle, writes a small call on
/// the calling thread (a write that cannot block: see ``publish(_:)``). The owner
/// thread keeps servicing heartbeats, confirms and `connection.blocked` while idle, and reconnects
/// with capped exponential backoff when the connection breaks, redeclaring the configured exchanges.
///
/// Lifecycle: a `Service`. ``run()`` starts the owner thread and returns after graceful shutdown
/// (or cancellation), once outstanding confirms have arrived or `shutdownTimeout` has passed.
public final class AMQPPublisher: Service, Sendable {
    private let configuration: AMQPPublisherConfiguration
    private let logger: Logger
    private let shared: Mutex<SharedState>
    /// Brackets the owner thread's socket writes for the stall watchdog.
    fileprivate let writes = WriteWatchdog()
    private let wakeup = Wakeup()
    private let lifecycle = OwnerLifecycle()
    /// When the broker last confirmed anything: progress for every waiting call (confirms come in order).
    fileprivate let windowProgress = ProgressStamp()
    /// Calls waiting for their outcome, for the backstop.
    private let backstop = BackstopRegistry()
    /// Held by the owner thread whenever it works on the connection and its state machine; free
    /// only while the owner waits in `poll(2)`. See ``publish(_:)`` for the caller that takes it then.
    fileprivate let gate = Mutex(OwnerGate())

    private struct SharedState {
        var commands: Deque<PublishCommand> = []
        var connectionState: AMQPConnectionState = .connecting
        var stopRequested = false
        var returnedCount = 0
        /// The owner waits for confirms of its own (at least ``deferredWakeupThreshold`` unconfirmed):
        /// the first of them wakes it, so a call need not (see ``publish(_:)``). Set by the owner
        /// just before it waits, with the inbox seen empty under the same lock.
        var ownerAwaitsConfirms = false
        /// Calls queued without waking the owner (for tests).
        var deferredWakeups = 0
    }

    public init(configuration: AMQPPublisherConfiguration, logger: Logger) {
        self.configuration = configuration
        self.logger = logger
        self.shared = Mutex(SharedState())
    }

    /// The current connection state. Safe from any thread.
    public var state: AMQPConnectionState { shared.withLock { $0.connectionState } }

    /// Publishes `messages` and returns once the broker has confirmed every one of them.
    ///
    /// Messages of one call are published back to back and in order; calls from concurrent tasks
    /// share the channel and each waits only for its own delivery tags.
    ///
    /// Who writes: normally the owner thread, woken for the call, unless it waits for at least
    /// ``deferredWakeupThreshold`` confirms: the first of them wakes it anyway, and it then takes
    /// every call queued meanwhile in one round (fewer wake-ups under load: BENCHMARKS.md, eighth
    /// round of issue 9). When the owner is waiting with
    /// nothing unconfirmed and nothing queued (one request at a time, the common case at low load),
    /// the call is at most ``callerWriteMessages`` messages and ``callerWriteLimit`` bytes on the
    /// wire, and the connection is plain TCP, the calling thread writes the messages itself under
    /// the owner's gate, saving the owner a wake-up on the way out. Only when the socket is quiet
    /// (the broker has acknowledged every byte sent, no input waits to be read) and its send buffer
    /// has room for the whole call, so the write cannot block. The owner still reads the confirm
    /// and answers the call. The gate is only ever tried, never waited for: a caller never blocks
    /// on the owner.
    /// - Throws: ``AMQPError`` with kind `.notConnected` or `.blocked` at once (nothing was sent),
    ///   `.nacked`, `.connectionLost` or `.confirmTimeout` when the outcome is negative or unknown
    ///   (some messages may have reached the broker: publishing again is at-least-once),
    ///   `.unencodable` when a message cannot be encoded (nothing of this call was sent; the
    ///   connection is unaffected), or `.shutdown` after shutdown began. The confirm deadline
    ///   measures progress: it runs from the last message of this call written or confirmed.
    public func publish(_ messages: [AMQPOutboundMessage]) async throws(AMQPError) {
        let box = ResultBox(window: windowProgress)
        // The owner thread enforces the confirm deadline; the backstop (one task for all calls, see
        // `run()`) answers a call whose owner thread is itself stuck (a socket write the broker stopped
        // reading, until the watchdog fires). Like the owner's deadline it measures progress.
        let ticket = backstop.add(box)
        defer { backstop.remove(ticket) }
        let result = await withCheckedContinuation { (continuation: CheckedContinuation<Result<Void, AMQPError>, Never>) in
            box.install(continuation)
            if writeWhileOwnerWaits(messages, waiter: box) { return }
            var wakeOwner = false
            let rejection: AMQPError? = shared.withLock { state in
                if state.stopRequested || lifecycle.isFinished { return AMQPError(.shutdown, "publisher is shutting down") }
                switch state.connectionState {
                case .connected:
                    state.commands.append(PublishCommand(messages: messages, result: box))
                    wakeOwner = !state.ownerAwaitsConfirms
                    if !wakeOwner { state.deferredWakeups += 1 }
                    return nil
                case .blocked(let reason):
                    return AMQPError(.blocked, "broker blocked publishing: \(reason)")
                case .connecting:
                    return AMQPError(.notConnected, "connecting to the broker")
                case .disconnected(let reason), .misconfigured(let reason):
                    return AMQPError(.notConnected, reason)
                case .closed:
                    return AMQPError(.shutdown, "publisher is closed")
                }
            }
            if let rejection {
                box.resume(.failure(rejection))
            } else if wakeOwner {
                wakeup.signal()
            }
        }
        try result.get()
    }

    /// Bytes on the wire (frames included) up to which a call may be written by its caller while
    /// the owner waits (see ``publish(_:)``).
    public static let callerWriteLimit = 16 << 10
    /// Messages up to which a call may be written by its caller (a webhook's events, not a spool chunk).
    public static let callerWriteMessages = 16
    /// Unconfirmed messages from which a call does not wake the owner (see ``publish(_:)``). Below
    /// it, a call waiting for the next confirm would wait for a broker round trip it need not.
    public static let deferredWakeupThreshold = 8

    /// Calls queued for the owner without waking it, because it waited for confirms (see ``publish(_:)``).
    @_spi(Testing) public var deferredWakeupCount: Int { shared.withLock { $0.deferredWakeups } }

    /// Calls their caller took on while the owner waited: wrote, or tried to write (the write
    /// failed); see ``publish(_:)``.
    @_spi(Testing) public var callerWriteCount: Int { callerWrites.load(ordering: .relaxed) }
    private let callerWrites = Atomic<Int>(0)

    /// `true` while the owner thread waits with nothing unconfirmed or queued, so that a call now
    /// is written by its caller (unless the owner wakes first). `false` while the owner is busy.
    @_spi(Testing) public var ownerWaitsIdle: Bool { gate.withLockIfAvailable { $0.parked != nil } ?? false }

    /// `true` while the owner waits idle and its socket is quiet (see ``publish(_:)``): a small
    /// call now is its caller's to write. `false` while the owner is busy.
    @_spi(Testing) public var ownerSocketIsQuiet: Bool {
        gate.withLockIfAvailable { $0.parked?.connection.quietSendCapacity != nil } ?? false
    }

    /// Shuts down the sending side of the connection's socket while the owner waits idle, so the
    /// next write fails as it would on a connection the network broke. `false` if the owner was busy.
    @_spi(Testing) public func breakSendingSideWhileOwnerWaits() -> Bool {
        gate.withLockIfAvailable { gate in
            guard let parked = gate.parked else { return false }
            return shutdown(parked.connection.fileDescriptor, Int32(SHUT_WR)) == 0
        } ?? false
    }

    /// Writes `messages` on the calling thread if the owner is parked idle (see ``publish(_:)``).
    /// Returns `false` when the call must go through the owner's inbox instead; `true` when it was
    /// written or answered (the owner answers it when the broker confirms).
    private func writeWhileOwnerWaits(_ messages: [AMQPOutboundMessage], waiter: ResultBox) -> Bool {
        // Cheap checks first; the exact size is checked under the gate.
        guard messages.count <= Self.callerWriteMessages,
              messages.reduce(0, { $0 + $1.body.count }) <= Self.callerWriteLimit
        else { return false }
        return gate.withLockIfAvailable { gate -> Bool in
            guard let parked = gate.parked, gate.callerWriteFailure == nil, parked.connection.configuration.tls == nil else { return false }
            let open = shared.withLock { state in
                state.connectionState == .connected && !state.stopRequested && state.commands.isEmpty && !lifecycle.isFinished
            }
            guard open else { return false }
            switch parked.loop.write(messages, waiter: waiter, on: parked.connection, ownerWakesAt: parked.wakesAt) {
            case .notIdle:
                return false
            case .answered:
                return true
            case .written(let ownerMustWake):
                callerWrites.add(1, ordering: .relaxed)
                gate.parked = nil  // no longer idle; the owner parks again once it has read the confirm
                if ownerMustWake { wakeup.signal() }
                return true
            case .failed(let error):
                // The connection is broken: the owner finds this on waking and reconnects, which
                // answers the call (`.connectionLost`) with everything else outstanding.
                callerWrites.add(1, ordering: .relaxed)
                gate.callerWriteFailure = error
                gate.parked = nil
                wakeup.signal()
                return true
            }
        } ?? false
    }

    /// Messages the broker returned as unroutable (`mandatory` publishes no queue was bound for and
    /// no alternate exchange took). They were still confirmed.
    public var returnedMessageCount: Int { shared.withLock { $0.returnedCount } }

    /// Starts the owner thread and runs until graceful shutdown or cancellation.
    public func run() async throws {
        lifecycle.markStarted("AMQPPublisher")
        let loop = PublisherLoop(configuration: configuration, logger: logger, publisher: self)
        OwnerThread.spawn(name: "amqp-publisher") { loop.run() }
        let watchdog = Task { await self.writes.run(limit: self.configuration.confirmTimeout, logger: self.logger) }
        let limit = configuration.confirmTimeout + .milliseconds(250)
        let backstop = Task { await self.backstop.run(limit: limit) }
        defer {
            watchdog.cancel()
            backstop.cancel()
        }
        await lifecycle.waitUntilFinished { self.requestStop() }
    }

    /// Begins shutdown: no new publishes are accepted; outstanding confirms are awaited up to
    /// `shutdownTimeout`; then the connection closes. Safe from any thread; idempotent.
    public func requestStop() {
        shared.withLock { $0.stopRequested = true }
        wakeup.signal()
    }

    // MARK: Owner-thread interface

    fileprivate func countReturned() { shared.withLock { $0.returnedCount += 1 } }

    fileprivate var wakeupHandle: Wakeup { wakeup }

    /// The owner is about to wait with `unconfirmed` messages unconfirmed: `false` when calls
    /// arrived that it has not taken (it must turn again first). Otherwise records whether calls
    /// arriving from now on may leave it asleep (see ``SharedState/ownerAwaitsConfirms``).
    fileprivate func ownerWillWait(unconfirmed: Int) -> Bool {
        shared.withLock { state in
            guard state.commands.isEmpty else { return false }
            state.ownerAwaitsConfirms = unconfirmed >= Self.deferredWakeupThreshold
            return true
        }
    }

    /// The owner left its connection (lost, or stopping): calls wake it again.
    fileprivate func ownerAwaitsNoConfirms() {
        shared.withLock { $0.ownerAwaitsConfirms = false }
    }

    fileprivate func takeCommands() -> (Deque<PublishCommand>, stopRequested: Bool) {
        shared.withLock { state in
            defer { state.commands.removeAll(keepingCapacity: true) }
            return (state.commands, state.stopRequested)
        }
    }

    fileprivate func setState(_ newState: AMQPConnectionState) {
        shared.withLock { $0.connectionState = newState }
    }

    fileprivate func markFinished() {
        shared.withLock { $0.connectionState = .closed }
        lifecycle.finish()
    }
}

/// Nanoseconds on the monotonic clock; for cheap atomic timestamps.
func monotonicNanoseconds() -> Int64 {
    var time = timespec()
    clock_gettime(CLOCK_MONOTONIC, &time)
    return Int64(time.tv_sec) * 1_000_000_000 + Int64(time.tv_nsec)
}

/// A monotonic timestamp shared between the owner thread (writer) and callers (readers). Thread-safe.
final class ProgressStamp: Sendable {
    private let stamp = Atomic<Int64>(monotonicNanoseconds())
    func note() { stamp.store(monotonicNanoseconds(), ordering: .relaxed) }
    var nanoseconds: Int64 { stamp.load(ordering: .relaxed) }
}

/// The calls waiting for an outcome, checked four times a second by one task: a call whose owner
/// thread made no progress on it for the limit is answered `.confirmTimeout`. A timer per call would
/// cost a task, a Dispatch timer and a wake-up for every publish. Thread-safe.
final class BackstopRegistry: Sendable {
    private let waiting = Mutex<(next: UInt64, boxes: [UInt64: ResultBox])>((0, [:]))

    func add(_ box: ResultBox) -> UInt64 {
        waiting.withLock { state in
            state.next &+= 1
            state.boxes[state.next] = box
            return state.next
        }
    }

    func remove(_ ticket: UInt64) { _ = waiting.withLock { $0.boxes.removeValue(forKey: ticket) } }

    /// Runs until cancelled.
    func run(limit: Duration) async {
        while !Task.isCancelled {
            try? await Task.sleep(for: .milliseconds(250))
            let overdue = waiting.withLock { state in state.boxes.values.filter { $0.timeSinceProgress >= limit } }
            for box in overdue { box.resume(.failure(AMQPError(.confirmTimeout, "no progress for \(limit)"))) }
        }
    }
}

/// One `publish` call waiting in the inbox.
struct PublishCommand: Sendable {
    let messages: [AMQPOutboundMessage]
    let result: ResultBox
}

/// One publish call's answer (given once: the owner thread's outcome or the caller's backstop) and
/// its progress, which the backstop measures. Thread-safe.
final class ResultBox: Sendable {
    private let progress = Atomic<Int64>(monotonicNanoseconds())
    private let window: ProgressStamp?

    /// `window`: progress shared by every call of the publisher (any confirm), if any.
    init(window: ProgressStamp? = nil) {
        self.window = window
    }

    /// Called by the owner thread whenever a message of this call is written or confirmed.
    func noteProgress() { progress.store(monotonicNanoseconds(), ordering: .relaxed) }

    /// Time since this call, or the window it waits in, last made progress.
    var timeSinceProgress: Duration {
        let last = max(progress.load(ordering: .relaxed), window?.nanoseconds ?? 0)
        return .nanoseconds(monotonicNanoseconds() - last)
    }

    private let outcome = OnceAnswer()

    func install(_ continuation: CheckedContinuation<Result<Void, AMQPError>, Never>) { outcome.install(continuation) }

    /// `true` once the caller has its answer (the owner stops writing a batch nobody waits for).
    var isResolved: Bool { outcome.isResolved }

    func resume(_ result: Result<Void, AMQPError>) { outcome.resume(result) }
}

extension ResultBox: PublishWaiter {
    var hasAnswer: Bool { isResolved }
    func answer(_ result: Result<Void, AMQPError>) { resume(result) }
}

/// What a caller may see of the owner thread through ``AMQPPublisher``'s gate.
fileprivate struct OwnerGate: ~Copyable {
    /// Set by the owner just before it waits with its state machine idle; cleared as soon as it
    /// takes the gate again (and before it leaves the connection).
    var parked: ParkedOwner?
    /// A caller's write failed while the owner waited: the connection is broken.
    var callerWriteFailure: AMQPError?
}

/// The owner's loop and connection while it waits, for a caller holding the gate.
/// @unchecked: only touched by whoever holds ``AMQPPublisher``'s gate. The supervisor's `connected`,
/// `lost` and `close` touch the machine and connection outside it, but only while no owner is parked
/// (`serve` clears `parked` on every turn and returns only from one).
fileprivate struct ParkedOwner: @unchecked Sendable {
    let loop: PublisherLoop
    let connection: AMQPConnection
    /// When the owner wakes by itself at the latest (to check deadlines).
    let wakesAt: ContinuousClock.Instant
}

/// The outcome of a caller's write while the owner waited.
fileprivate enum CallerWrite {
    /// The owner is not idle (messages unconfirmed or queued), or the socket not quiet: go through the inbox.
    case notIdle
    /// Answered without writing anything (empty, unencodable, or the broker blocks publishing).
    case answered
    /// Written; `ownerMustWake` when the owner has to look sooner than it would by itself.
    case written(ownerMustWake: Bool)
    /// The socket write failed: the connection is broken.
    case failed(AMQPError)
}

/// The owner thread's loop: connect, declare, then drive the ``PublisherStateMachine`` with what
/// the connection and the callers bring, doing the writes and waits it asks for; reconnect.
private final class PublisherLoop: @unchecked Sendable {
    // @unchecked: after `spawn`, only the owner thread touches this object, or a caller holding
    // the publisher's gate while the owner waits outside it (see `write(_:waiter:on:ownerWakesAt:)`).
    private let configuration: AMQPPublisherConfiguration
    private var logger: Logger
    private let publisher: AMQPPublisher
    private let clock = ContinuousClock()
    private var machine: PublisherStateMachine<ResultBox>
    /// The current round's frames (see ``writeRound(on:corked:now:)``); empty between rounds.
    private var frames = PublishFrames()

    init(configuration: AMQPPublisherConfiguration, logger: Logger, publisher: AMQPPublisher) {
        self.configuration = configuration
        self.logger = logger
        self.publisher = publisher
        self.machine = PublisherStateMachine(
            configuration: .init(
                maxUnconfirmed: configuration.maxUnconfirmed, confirmTimeout: configuration.confirmTimeout,
                shutdownTimeout: configuration.shutdownTimeout),
            now: .now)
        self.logger[metadataKey: "amqp.url"] = "\(configuration.connection.redactedURL)"
    }

    func run() {
        let supervisor = ConnectionSupervisor(
            connections: [configuration.connection] + configuration.failoverConnections, backoff: configuration.reconnectBackoff, wakeup: publisher.wakeupHandle,
            logger: logger, setState: publisher.setState)
        _ = supervisor.run(
            shouldStop: {
                let (queued, stopRequested) = publisher.takeCommands()
                let error = stopRequested ? AMQPError(.shutdown, "publisher is shutting down") : AMQPError(.notConnected, "connecting to the broker")
                for command in queued { command.result.resume(.failure(error)) }
                return stopRequested
            },
            prepare: { (connection: AMQPConnection) throws(AMQPError) in
                try connection.declareTopology(exchanges: configuration.exchanges, queues: configuration.queues, logger: logger)
                try connection.enablePublisherConfirms()
            },
            connected: { machine.connected(now: clock.now) },
            serve: { serve($0) },
            lost: { machine.failOutstanding($0, now: clock.now) })
        logger.info("publisher stopped")
        publisher.markFinished()
    }

    /// What the owner does after one turn under the gate.
    private enum Step {
        case again
        case wait(Duration)
        case finished(ServeOutcome)
    }

    private func serve(_ connection: AMQPConnection) -> ServeOutcome {
        let socket = connection.fileDescriptor  // read once: outside the gate a caller may be using the connection
        defer { publisher.ownerAwaitsNoConfirms() }  // no confirms come once the connection is left
        while true {
            let step = publisher.gate.withLock { gate -> Step in
                gate.parked = nil
                if let failure = gate.callerWriteFailure {
                    gate.callerWriteFailure = nil
                    return .finished(.lost(failure))
                }
                let step = turn(connection)
                if case .wait(let timeout) = step, machine.isIdle {
                    gate.parked = ParkedOwner(loop: self, connection: connection, wakesAt: clock.now.advanced(by: timeout))
                }
                return step
            }
            switch step {
            case .again:
                continue
            case .wait(let timeout):
                publisher.wakeupHandle.wait(socket: socket, timeout: timeout)
            case .finished(let outcome):
                return outcome
            }
        }
    }

    /// A caller's write while the owner waits, under the gate: the owner's own round of writing
    /// for one call, if the machine is idle, the socket quiet and its send buffer has room for the
    /// whole call (so the write cannot block).
    fileprivate func write(
        _ messages: [AMQPOutboundMessage], waiter: ResultBox, on connection: AMQPConnection, ownerWakesAt: ContinuousClock.Instant
    ) -> CallerWrite {
        guard machine.isIdle, let capacity = connection.quietSendCapacity else { return .notIdle }
        let frameSize = connection.frameSize
        let bytes = messages.reduce(0) { $0 + $1.encodedSize(frameSize: frameSize) }
        guard bytes <= min(AMQPPublisher.callerWriteLimit, capacity) else { return .notIdle }
        let now = clock.now
        machine.submit(messages, waiter: waiter, frameSize: frameSize, now: now)
        if machine.isIdle { return .answered }  // nothing was queued: the call has its answer
        if let error = writeRound(on: connection, corked: messages.count > 1, now: now) { return .failed(error) }
        // rabbitmq-c may have read frames while writing (it checks heartbeats): the owner's poll
        // would not see them. And the owner checks this call's deadline only when it wakes.
        let mustWake = connection.hasBufferedInput || now.advanced(by: configuration.confirmTimeout) < ownerWakesAt
        return .written(ownerMustWake: mustWake)
    }

    /// Bodies up to this size are copied into the round's frames; a larger one is written by
    /// rabbitmq-c from its own storage, after the frames before it.
    static let copiedBodyLimit = 64 << 10
    /// The round's frames are sent whenever they reach this size (and at the end of the round).
    static let framesSendSize = 256 << 10

    /// Writes what the machine says for one round, each write watched for a stall. Returns the
    /// error when a write fails: the connection is then unusable.
    ///
    /// Over plain TCP the round's messages are encoded into one buffer and leave in one `send(2)`
    /// (``PublishFrames``): rabbitmq-c would make three system calls per message. A message is
    /// counted as written (it takes its delivery tag) when its frames are in the buffer; if the
    /// send then fails, the connection is lost and every outstanding call is answered so.
    private func writeRound(on connection: AMQPConnection, corked: Bool, now: ContinuousClock.Instant) -> AMQPError? {
        guard connection.sendsFramesDirectly else { return writeRoundMessageByMessage(on: connection, corked: corked, now: now) }
        frames.removeAll()
        let frameSize = connection.frameSize
        while let message = machine.nextMessage(now: now) {
            if message.body.count > Self.copiedBodyLimit {
                if let error = sendFrames(on: connection) ?? publishThroughRabbitMQC(message, on: connection) { return error }
            } else {
                do {
                    try frames.append(message, channel: AMQPConnection.channel, frameSize: frameSize)
                } catch {
                    // Not expected (`encodingProblem` refused such messages when they were
                    // submitted). The messages before it took their delivery tags: send them, then
                    // give the connection up as for a failed write (`.unencodable` would tell the
                    // callers nothing was sent, which is not so for the others).
                    return sendFrames(on: connection)
                        ?? AMQPError(.connectionLost, "could not encode a message after the check that should refuse it: \(error.message)")
                }
            }
            machine.wrote()
            if frames.bytes.count >= Self.framesSendSize, let error = sendFrames(on: connection) { return error }
        }
        if let error = sendFrames(on: connection) { return error }
        machine.endRound(now: clock.now)
        return nil
    }

    /// Sends the frames gathered so far (none: nothing), watched for a stall. The watchdog measures
    /// progress, as it did per message: every write that moved bytes re-arms it.
    private func sendFrames(on connection: AMQPConnection) -> AMQPError? {
        guard !frames.isEmpty else { return nil }
        defer { frames.removeAll() }
        return watched(connection) { rearm throws(AMQPError) in try connection.sendFrames(frames.bytes, onProgress: rearm) }
    }

    /// One message through `amqp_basic_publish` (three writes), watched for a stall.
    private func publishThroughRabbitMQC(_ message: AMQPOutboundMessage, on connection: AMQPConnection) -> AMQPError? {
        watched(connection) { _ throws(AMQPError) in try connection.publish(message) }
    }

    /// Runs `write` on `connection`'s socket under the stall watchdog; `write` may call the closure
    /// it is given to restart the watchdog's clock when it made progress. Returns the error it threw.
    private func watched(_ connection: AMQPConnection, _ write: (_ rearm: () -> Void) throws(AMQPError) -> Void) -> AMQPError? {
        let socket = connection.fileDescriptor
        publisher.writes.begin(socket: socket)
        defer { publisher.writes.end() }
        do {
            try write { publisher.writes.begin(socket: socket) }
            return nil
        } catch {
            return error
        }
    }

    /// ``writeRound(on:corked:now:)`` over TLS: each message through rabbitmq-c, the socket corked
    /// while several go out in a row so that they leave in full segments.
    private func writeRoundMessageByMessage(on connection: AMQPConnection, corked: Bool, now: ContinuousClock.Instant) -> AMQPError? {
        if corked { connection.setCorked(true) }
        defer { if corked { connection.setCorked(false) } }
        while let message = machine.nextMessage(now: now) {
            if let error = publishThroughRabbitMQC(message, on: connection) { return error }
            machine.wrote()
        }
        machine.endRound(now: clock.now)
        return nil
    }

    /// One turn of the owner: take the inbox, write a round, read what the broker sent, check deadlines.
    private func turn(_ connection: AMQPConnection) -> Step {
        let (commands, stopRequested) = publisher.takeCommands()
        var now = clock.now
        if stopRequested { machine.requestStop(now: now) }
        let frameSize = connection.frameSize
        for command in commands {
            machine.submit(command.messages, waiter: command.result, frameSize: frameSize, now: now)
        }

        // Corked when several messages go out in a row, so they leave in full segments.
        if let error = writeRound(on: connection, corked: machine.nextRoundWritesSeveral, now: now) {
            return .finished(.lost(error))  // the connection is gone; `lost` answers the waiters
        }
        now = clock.now

        // rabbitmq-c sends its heartbeat from the read when one is due (it does not see the frames
        // `sendFrames` wrote), and that write can block like any other: the watchdog covers it.
        publisher.writes.begin(socket: connection.fileDescriptor)
        defer { publisher.writes.end() }
        do {
            while let event = try connection.nextEvent(timeout: .zero) {
                switch event {
                case .ack(let tag, let multiple):
                    machine.confirmed(upTo: tag, multiple: multiple, now: clock.now)
                    publisher.windowProgress.note()
                case .nack(let tag, let multiple):
                    machine.rejected(upTo: tag, multiple: multiple)
                case .returned(let code, let text, let message):
                    // The confirm that follows settles it; the message itself reached no queue.
                    publisher.countReturned()
                    Counter(label: "amqp_messages_returned_total").increment()
                    logger.warning(
                        "broker returned an unroutable message",
                        metadata: [
                            "code": "\(code)", "reason": "\(text)", "routing_key": "\(message.routingKey)",
                            "message_id": "\(message.properties.messageID ?? "")",
                        ])
                case .blocked(let reason):
                    machine.setBlocked(true)
                    publisher.setState(.blocked(reason: reason))
                    logger.warning("broker blocked publishing", metadata: ["reason": "\(reason)"])
                case .unblocked:
                    machine.setBlocked(false)
                    publisher.setState(.connected)
                    logger.info("broker unblocked publishing")
                case .delivery, .consumerCancelled:
                    break
                }
            }
        } catch {
            return .finished(.lost(error))
        }

        switch machine.tick(now: clock.now) {
        case .stopped:
            return .finished(.stopped)
        case .reconnect(let error):
            return .finished(.lost(error))
        case .writeMore:
            return .again
        case .wait(let timeout):
            // rabbitmq-c may hold frames `poll` would not see; calls may have come since this turn took them.
            guard !connection.hasBufferedInput, publisher.ownerWillWait(unconfirmed: machine.unconfirmed) else { return .again }
            return .wait(timeout)
        }
    }
}
