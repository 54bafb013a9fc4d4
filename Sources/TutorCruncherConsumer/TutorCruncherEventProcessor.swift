import AMQPClient
import DequeModule
import Logging
import ServiceLifecycle
import Synchronization
import Tracing
import TutorCruncherEvents

/// Runs a handler for every event of a subscription: returning acknowledges, throwing retries
/// after the retry policy's wait (up to its `maxAttempts`, then the event is dead-lettered with
/// the error).
///
/// Up to `prefetch` handlers run concurrently. A `Service`: on graceful shutdown no new events are
/// taken, handlers in flight get the configuration's `shutdownTimeout` to finish and be
/// acknowledged; handlers still running then are cancelled (cooperative cancellation: `Task.sleep`,
/// HTTP clients and the like throw `CancellationError`), their events stay unacknowledged and come
/// back on the next start, and `run()` returns. A re-queue or dead-letter publish already waiting
/// for its confirm at the deadline may finish first (at most `confirmTimeout` more).
///
/// Each handler runs in a `consumer` span (configuration's `tracer`) that continues the trace of
/// the webhook request the event came in (the message's `traceparent` header), so
/// `ServiceContext.current` inside the handler carries it on to the service's own calls.
///
/// ```swift
/// let processor = TutorCruncherEventProcessor(configuration: configuration, logger: logger) { event in
///     guard let invoice = event.subject?.invoice else { return }
///     try await billing.record(invoice, eventID: event.eventID)
/// }
/// try await ServiceGroup(services: [processor], gracefulShutdownSignals: [.sigterm], logger: logger).run()
/// ```
public struct TutorCruncherEventProcessor: Service, Sendable {
    public typealias Handler = @Sendable (TutorCruncherEvent) async throws -> Void
    /// A handler that also gets the delivery's ``TutorCruncherDeliveryContext``.
    public typealias ContextHandler = @Sendable (TutorCruncherEvent, TutorCruncherDeliveryContext) async throws -> Void

    public let consumer: TutorCruncherConsumer
    private let handler: ContextHandler
    private let logger: Logger

    public init(configuration: TutorCruncherConsumerConfiguration, logger: Logger, handler: @escaping Handler) {
        self.init(configuration: configuration, logger: logger) { event, _ in try await handler(event) }
    }

    /// The same, with a handler that sees the attempt, the redelivery flag, the message id and headers.
    public init(configuration: TutorCruncherConsumerConfiguration, logger: Logger, contextHandler: @escaping ContextHandler) {
        self.consumer = TutorCruncherConsumer(configuration: configuration, logger: logger)
        self.handler = contextHandler
        self.logger = logger
    }

    public func run() async throws {
        let consumer = self.consumer
        try await withThrowingTaskGroup(of: Void.self) { group in
            // Ends once shutdown is complete: in-flight events settled, or `shutdownTimeout` passed
            // and the connection closed. Throws when the broker refuses the configuration.
            group.addTask { try await consumer.run() }
            let configuration = consumer.configuration
            let slots = HandlerSlots(max(1, min(configuration.concurrency ?? Int(configuration.prefetch), Int(configuration.prefetch))))
            let turns = configuration.orderedBySubject ? SubjectTurns() : nil
            group.addTask {
                try await withThrowingDiscardingTaskGroup { handlers in
                    for try await delivery in consumer.deliveries {
                        // Taken here, in arrival order, before the task that waits for it starts.
                        let turn = turns?.take(for: Self.orderingKey(of: delivery.event))
                        handlers.addTask {
                            if let turn { await turns?.wait(for: turn) }
                            await slots.acquire()
                            // Shut down, or the connection broke, while waiting for a slot or a turn:
                            // the event comes back; do not start work whose ack cannot be sent.
                            if !Task.isCancelled, !delivery.isStale { await self.process(delivery) }
                            slots.release()
                            if let turn { turns?.done(turn) }
                        }
                    }
                }
            }
            // Either ends only when the consumer stops. If the connection went first, handlers
            // still running can no longer settle anything: cancel them rather than let them hold
            // the process open. (Cancelling a stopping consumer's `run()` changes nothing: it
            // still closes in order.)
            defer { group.cancelAll() }
            try await group.next()
            group.cancelAll()
            try await group.waitForAll()
        }
    }

    private func process(_ delivery: TutorCruncherDelivery) async {
        ConsumerMetrics.handlerStarted()
        let started = ContinuousClock.now
        do {
            try await traced(delivery) { try await handler(delivery.event, TutorCruncherDeliveryContext(delivery)) }
            ConsumerMetrics.handlerEnded(after: ContinuousClock.now - started)
        } catch {
            ConsumerMetrics.handlerEnded(after: nil)
            if Task.isCancelled {
                // Shut down at the deadline: the connection is gone; the broker delivers it again.
                logger.notice(
                    "handler cancelled at the shutdown deadline; the event will be delivered again",
                    metadata: ["event_id": "\(delivery.event.eventID)", "action": "\(delivery.event.action)"])
                return
            }
            ConsumerMetrics.delivered(action: delivery.event.action.rawValue, outcome: .retried)
            logger.warning(
                "handler failed",
                metadata: [
                    "event_id": "\(delivery.event.eventID)", "action": "\(delivery.event.action)",
                    "attempt": "\(delivery.attempt)", "error": "\(error)",
                ])
            do throws(AMQPError) {
                try await delivery.retry(because: error)
            } catch where error.kind == .unencodable {
                // Dead-lettered instead (logged where that was decided).
            } catch {
                logger.warning("could not re-queue; the broker will redeliver", metadata: ["error": "\(error)"])
            }
            return
        }
        do {
            try await delivery.ack()
            ConsumerMetrics.delivered(action: delivery.event.action.rawValue, outcome: .acknowledged)
        } catch {
            // The connection broke after handling: the broker redelivers (at-least-once).
            logger.notice("acknowledgement lost; the event will be redelivered", metadata: ["event_id": "\(delivery.event.eventID)", "error": "\(error)"])
        }
    }

    /// Events of one subject share a key; an event without a subject id is ordered with nothing.
    static func orderingKey(of event: TutorCruncherEvent) -> String? {
        guard let subject = event.subject, let id = subject.id else { return nil }
        return "\(subject.model?.rawValue ?? "")#\(id)"
    }

    /// Runs `body` in a span continuing the trace in the delivery's headers (errors are recorded
    /// on the span and rethrown).
    private func traced(_ delivery: TutorCruncherDelivery, _ body: () async throws -> Void) async throws {
        let tracer = consumer.configuration.tracer ?? InstrumentationSystem.tracer
        var context = ServiceContext.topLevel
        tracer.extract(delivery.delivery.message.properties.headers, into: &context, using: AMQPHeaderExtractor())
        let action = delivery.event.action.rawValue
        try await tracer.withSpan("\(action) process", context: context, ofKind: .consumer) { span in
            span.attributes["messaging.system"] = "rabbitmq"
            span.attributes["messaging.operation.type"] = "process"
            span.attributes["messaging.destination.name"] = consumer.configuration.queue
            span.attributes["messaging.rabbitmq.destination.routing_key"] = action
            span.attributes["messaging.message.id"] = delivery.event.eventID
            span.attributes["tutorcruncher.attempt"] = delivery.attempt
            try await body()
        }
    }
}

/// Reads trace context (e.g. W3C `traceparent`) from an AMQP message's string headers. Anyone
/// who can publish to the exchange can set them: a `traceparent` that is not exactly the W3C
/// format, or any value over 512 bytes (a `tracestate` the tracer's parser would spend seconds
/// on), is ignored and the handler's span starts a trace of its own.
struct AMQPHeaderExtractor: Extractor {
    static let maxValueBytes = 512

    func extract(key: String, from carrier: [(String, AMQPHeaderValue)]) -> String? {
        for (name, value) in carrier where name == key {
            guard case .string(let text) = value, text.utf8.count <= Self.maxValueBytes else { return nil }
            if key == "traceparent", !Self.isWellFormedTraceParent(text) { return nil }
            return text
        }
        return nil
    }

    /// `vv-<32 hex>-<16 hex>-ff`, lowercase hex, 55 bytes.
    static func isWellFormedTraceParent(_ text: String) -> Bool {
        let bytes = Array(text.utf8)
        guard bytes.count == 55 else { return false }
        for (index, byte) in bytes.enumerated() {
            if [2, 35, 52].contains(index) {
                guard byte == UInt8(ascii: "-") else { return false }
            } else {
                guard (UInt8(ascii: "0")...UInt8(ascii: "9")).contains(byte) || (UInt8(ascii: "a")...UInt8(ascii: "f")).contains(byte) else {
                    return false
                }
            }
        }
        return true
    }
}

/// A counting semaphore for handler tasks, first come first served. Thread-safe.
final class HandlerSlots: Sendable {
    private let state: Mutex<(free: Int, waiting: Deque<CheckedContinuation<Void, Never>>)>

    init(_ count: Int) { state = Mutex((count, [])) }

    func acquire() async {
        await withCheckedContinuation { (continuation: CheckedContinuation<Void, Never>) in
            let granted = state.withLock { state in
                guard state.free > 0 else {
                    state.waiting.append(continuation)
                    return false
                }
                state.free -= 1
                return true
            }
            if granted { continuation.resume() }
        }
    }

    func release() {
        let next = state.withLock { state in
            guard let next = state.waiting.popFirst() else {
                state.free += 1
                return nil as CheckedContinuation<Void, Never>?
            }
            return next  // the slot passes straight to the next waiter
        }
        next?.resume()
    }
}

/// Turns per subject: tickets taken in arrival order, each task waiting until the tickets before
/// it for the same subject are done. Thread-safe.
final class SubjectTurns: Sendable {
    struct Turn: Sendable {
        let key: String
        let ticket: UInt64
    }

    private struct State {
        var nextTicket: UInt64 = 0
        /// Tickets not yet done, per subject, oldest first.
        var queues: [String: Deque<UInt64>] = [:]
        var waiting: [UInt64: CheckedContinuation<Void, Never>] = [:]
    }

    private let state = Mutex(State())

    /// A ticket for `key`, behind every one taken before (`nil` key: no ordering).
    func take(for key: String?) -> Turn? {
        guard let key else { return nil }
        return state.withLock { state in
            let ticket = state.nextTicket
            state.nextTicket &+= 1
            state.queues[key, default: []].append(ticket)
            return Turn(key: key, ticket: ticket)
        }
    }

    /// Returns once every earlier ticket of the same subject is done.
    func wait(for turn: Turn) async {
        await withCheckedContinuation { (continuation: CheckedContinuation<Void, Never>) in
            let ready = state.withLock { state in
                guard state.queues[turn.key]?.first != turn.ticket else { return true }
                state.waiting[turn.ticket] = continuation
                return false
            }
            if ready { continuation.resume() }
        }
    }

    func done(_ turn: Turn) {
        let next = state.withLock { state -> CheckedContinuation<Void, Never>? in
            guard var queue = state.queues[turn.key], queue.first == turn.ticket else { return nil }
            queue.removeFirst()
            guard let head = queue.first else {
                state.queues[turn.key] = nil
                return nil
            }
            state.queues[turn.key] = queue
            return state.waiting.removeValue(forKey: head)
        }
        next?.resume()
    }
}
