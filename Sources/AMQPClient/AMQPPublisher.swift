import DequeModule
import Logging
import ServiceLifecycle
import Synchronization

/// Configuration of an ``AMQPPublisher``.
public struct AMQPPublisherConfiguration: Sendable {
    public var connection: AMQPConnectionConfiguration
    /// Exchanges declared (idempotently) on every connect, before anything is published.
    public var exchanges: [AMQPExchangeDeclaration]
    /// How long a publish waits for the broker's confirm before failing with `.confirmTimeout`
    /// (default 5 s, well under TutorCruncher's 8 s request timeout).
    public var confirmTimeout: Duration
    /// Delay between reconnect attempts.
    public var reconnectBackoff: AMQPBackoff
    /// On shutdown, how long to wait for outstanding confirms before failing them (default 5 s).
    public var shutdownTimeout: Duration

    public init(
        connection: AMQPConnectionConfiguration,
        exchanges: [AMQPExchangeDeclaration] = [],
        confirmTimeout: Duration = .seconds(5),
        reconnectBackoff: AMQPBackoff = AMQPBackoff(),
        shutdownTimeout: Duration = .seconds(5)
    ) {
        self.connection = connection
        self.exchanges = exchanges
        self.confirmTimeout = confirmTimeout
        self.reconnectBackoff = reconnectBackoff
        self.shutdownTimeout = shutdownTimeout
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
    /// Shut down; will not reconnect.
    case closed
}

/// Publishes messages to RabbitMQ with publisher confirms, pipelined across any number of
/// concurrent callers.
///
/// Threading: one dedicated OS thread owns the rabbitmq-c connection; ``publish(_:)`` may be called
/// from any task and only enqueues work and waits, never blocking a cooperative thread. The owner
/// thread keeps servicing heartbeats, confirms and `connection.blocked` while idle, and reconnects
/// with capped exponential backoff when the connection breaks, redeclaring the configured exchanges.
///
/// Lifecycle: a `Service`. ``run()`` starts the owner thread and returns after graceful shutdown
/// (or cancellation), once outstanding confirms have arrived or `shutdownTimeout` has passed.
public final class AMQPPublisher: Service, Sendable {
    private let configuration: AMQPPublisherConfiguration
    private let logger: Logger
    private let shared: Mutex<SharedState>
    private let wakeup = Wakeup()

    private struct SharedState {
        var commands: Deque<PublishCommand> = []
        var connectionState: AMQPConnectionState = .connecting
        var started = false
        var stopRequested = false
        var finished: CheckedContinuation<Void, Never>?
        var isFinished = false
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
    /// - Throws: ``AMQPError`` with kind `.notConnected` or `.blocked` at once (nothing was sent),
    ///   `.nacked`, `.connectionLost` or `.confirmTimeout` when the outcome is negative or unknown
    ///   (some messages may have reached the broker: publishing again is at-least-once), or
    ///   `.shutdown` after shutdown began.
    public func publish(_ messages: [AMQPOutboundMessage]) async throws(AMQPError) {
        let result = await withCheckedContinuation { (continuation: CheckedContinuation<Result<Void, AMQPError>, Never>) in
            let rejection: AMQPError? = shared.withLock { state in
                if state.stopRequested || state.isFinished { return AMQPError(.shutdown, "publisher is shutting down") }
                switch state.connectionState {
                case .connected:
                    state.commands.append(PublishCommand(messages: messages, continuation: continuation))
                    return nil
                case .blocked(let reason):
                    return AMQPError(.blocked, "broker blocked publishing: \(reason)")
                case .connecting:
                    return AMQPError(.notConnected, "connecting to the broker")
                case .disconnected(let reason):
                    return AMQPError(.notConnected, reason)
                case .closed:
                    return AMQPError(.shutdown, "publisher is closed")
                }
            }
            if let rejection {
                continuation.resume(returning: .failure(rejection))
            } else {
                wakeup.signal()
            }
        }
        try result.get()
    }

    /// Starts the owner thread and runs until graceful shutdown or cancellation.
    public func run() async throws {
        let alreadyStarted = shared.withLock { state in
            defer { state.started = true }
            return state.started
        }
        precondition(!alreadyStarted, "AMQPPublisher.run() called twice")
        let loop = PublisherLoop(configuration: configuration, logger: logger, publisher: self)
        OwnerThread.spawn(name: "amqp-publisher") { loop.run() }
        await withTaskCancellationHandler {
            await withGracefulShutdownHandler {
                await withCheckedContinuation { (continuation: CheckedContinuation<Void, Never>) in
                    let done = shared.withLock { state in
                        if state.isFinished { return true }
                        state.finished = continuation
                        return false
                    }
                    if done { continuation.resume() }
                }
            } onGracefulShutdown: {
                self.requestStop()
            }
        } onCancel: {
            self.requestStop()
        }
    }

    /// Begins shutdown: no new publishes are accepted; outstanding confirms are awaited up to
    /// `shutdownTimeout`; then the connection closes. Safe from any thread; idempotent.
    public func requestStop() {
        shared.withLock { $0.stopRequested = true }
        wakeup.signal()
    }

    // MARK: Owner-thread interface

    fileprivate var wakeupHandle: Wakeup { wakeup }

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
        let continuation = shared.withLock { state in
            state.isFinished = true
            state.connectionState = .closed
            defer { state.finished = nil }
            return state.finished
        }
        continuation?.resume()
    }
}

/// One `publish` call waiting in the inbox.
struct PublishCommand: Sendable {
    let messages: [AMQPOutboundMessage]
    let continuation: CheckedContinuation<Result<Void, AMQPError>, Never>
}

/// A publish call whose messages are on the wire. Owner-thread only.
private final class PendingBatch {
    private var continuation: CheckedContinuation<Result<Void, AMQPError>, Never>?
    private var unconfirmed: Int
    let deadline: ContinuousClock.Instant

    init(_ command: PublishCommand, deadline: ContinuousClock.Instant) {
        self.continuation = command.continuation
        self.unconfirmed = command.messages.count
        self.deadline = deadline
    }

    var isSettled: Bool { continuation == nil }

    func confirmOne() {
        unconfirmed -= 1
        if unconfirmed <= 0 { settle(.success(())) }
    }

    func settle(_ result: Result<Void, AMQPError>) {
        continuation?.resume(returning: result)
        continuation = nil
    }
}

/// The owner thread's loop: connect, declare, publish, read confirms, reconnect.
private final class PublisherLoop: @unchecked Sendable {
    // @unchecked: after `spawn`, only the owner thread touches this object.
    private let configuration: AMQPPublisherConfiguration
    private var logger: Logger
    private unowned(unsafe) let publisher: AMQPPublisher
    private let clock = ContinuousClock()

    private var ledger = ConfirmLedger<PendingBatch>()
    private var inFlight: Deque<PendingBatch> = []
    private var stopDeadline: ContinuousClock.Instant?

    init(configuration: AMQPPublisherConfiguration, logger: Logger, publisher: AMQPPublisher) {
        self.configuration = configuration
        self.logger = logger
        self.publisher = publisher
        self.logger[metadataKey: "amqp.url"] = "\(configuration.connection.redactedURL)"
    }

    func run() {
        var attempt = 0
        while true {
            let (queued, stopRequested) = publisher.takeCommands()
            if stopRequested {
                fail(queued, AMQPError(.shutdown, "publisher is shutting down"))
                break
            }
            fail(queued, AMQPError(.notConnected, "connecting to the broker"))
            let connection: AMQPConnection
            do {
                connection = try AMQPConnection(configuration: configuration.connection)
                for exchange in configuration.exchanges { try connection.declare(exchange) }
                try connection.enablePublisherConfirms()
            } catch {
                publisher.setState(.disconnected(reason: error.message))
                let delay = configuration.reconnectBackoff.delay(attempt: attempt)
                logger.warning("broker connection failed; retrying", metadata: ["error": "\(error)", "retry_in": "\(delay)"])
                attempt += 1
                publisher.wakeupHandle.wait(socket: -1, timeout: delay)
                continue
            }
            logger.info("connected to broker")
            attempt = 0
            resetTags()
            publisher.setState(.connected)
            let outcome = serve(connection)
            switch outcome {
            case .stopped:
                connection.close()
                logger.info("publisher stopped")
                publisher.markFinished()
                return
            case .lost(let error):
                logger.warning("broker connection lost; reconnecting", metadata: ["error": "\(error)"])
                publisher.setState(.disconnected(reason: error.message))
                failOutstanding(error)
                connection.close()
            }
        }
        publisher.markFinished()
    }

    private enum ServeOutcome {
        case stopped
        case lost(AMQPError)
    }

    private func serve(_ connection: AMQPConnection) -> ServeOutcome {
        var blocked = false
        while true {
            let (commands, stopRequested) = publisher.takeCommands()
            if stopRequested, stopDeadline == nil {
                stopDeadline = clock.now.advanced(by: configuration.shutdownTimeout)
            }
            for command in commands {
                if blocked {
                    command.continuation.resume(returning: .failure(AMQPError(.blocked, "broker blocked publishing")))
                    continue
                }
                let batch = PendingBatch(command, deadline: clock.now.advanced(by: configuration.confirmTimeout))
                if command.messages.isEmpty {
                    batch.settle(.success(()))
                    continue
                }
                inFlight.append(batch)
                for message in command.messages {
                    do {
                        try connection.publish(message)
                    } catch {
                        return .lost(error)
                    }
                    ledger.register(batch)
                }
            }

            do {
                while let event = try connection.nextEvent(timeout: .zero) {
                    switch event {
                    case .ack(let tag, let multiple):
                        for batch in ledger.settle(upTo: tag, multiple: multiple) { batch.confirmOne() }
                    case .nack(let tag, let multiple):
                        for batch in ledger.settle(upTo: tag, multiple: multiple) {
                            batch.settle(.failure(AMQPError(.nacked, "broker rejected the message (basic.nack)")))
                        }
                    case .returned(let code, let text, let message):
                        logger.debug("message returned", metadata: ["code": "\(code)", "reason": "\(text)", "routing_key": "\(message.routingKey)"])
                    case .blocked(let reason):
                        blocked = true
                        publisher.setState(.blocked(reason: reason))
                        logger.warning("broker blocked publishing", metadata: ["reason": "\(reason)"])
                    case .unblocked:
                        blocked = false
                        publisher.setState(.connected)
                        logger.info("broker unblocked publishing")
                    case .delivery, .consumerCancelled:
                        break
                    }
                }
            } catch {
                return .lost(error)
            }

            let now = clock.now
            while let first = inFlight.first, first.isSettled || first.deadline <= now {
                inFlight.removeFirst()
                first.settle(.failure(AMQPError(.confirmTimeout, "no confirm within \(configuration.confirmTimeout)")))
            }
            if let stopDeadline {
                if inFlight.isEmpty { return .stopped }
                if now >= stopDeadline {
                    failOutstanding(AMQPError(.shutdown, "shut down before the broker confirmed"))
                    return .stopped
                }
            }
            if connection.hasBufferedInput { continue }
            var timeout = Duration.seconds(1)
            if let first = inFlight.first { timeout = min(timeout, first.deadline - now) }
            if let stopDeadline { timeout = min(timeout, stopDeadline - now) }
            publisher.wakeupHandle.wait(socket: connection.fileDescriptor, timeout: max(timeout, .zero))
        }
    }

    private func resetTags() {
        _ = ledger.reset()
        inFlight.removeAll()
    }

    private func failOutstanding(_ error: AMQPError) {
        for batch in inFlight { batch.settle(.failure(error)) }
        resetTags()
    }

    private func fail(_ commands: Deque<PublishCommand>, _ error: AMQPError) {
        for command in commands { command.continuation.resume(returning: .failure(error)) }
    }
}
