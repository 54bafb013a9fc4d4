import AMQPClient
import Logging
import ServiceLifecycle
import TCBridgeContract
import TutorCruncher
import TutorCruncherEvents

/// Subscribes a service's queue to TutorCruncher actions and hands out typed events.
///
/// Declares (idempotently, on every connect) the queue, its bindings and its dead-letter queue;
/// reconnects with backoff after a broker restart and carries on. Undecodable messages never reach
/// you: they go straight to the dead-letter queue with the reason in `tc-error`.
///
/// Use ``deliveries`` and settle each ``TutorCruncherDelivery`` yourself, or give a handler to
/// ``TutorCruncherEventProcessor``. Run the consumer as a `Service` (e.g. in a `ServiceGroup`):
/// on graceful shutdown it stops taking new deliveries, waits for those in flight to be settled
/// (up to `shutdownTimeout`, and `confirmTimeout` more for a re-queue or dead-letter publish already
/// under way) and closes. Delivery is at least once: see ``TutorCruncherDelivery``.
public final class TutorCruncherConsumer: Service, Sendable {
    public let configuration: TutorCruncherConsumerConfiguration
    let amqp: AMQPConsumer
    let logger: Logger
    let duplicateFilter: DuplicateFilter?
    /// The retry policy's waits, one wait queue each (computed once).
    let waitTiers: [Duration]

    public init(configuration: TutorCruncherConsumerConfiguration, logger: Logger) {
        self.configuration = configuration
        self.logger = logger
        self.amqp = AMQPConsumer(configuration: configuration.amqpConfiguration, logger: logger)
        self.duplicateFilter = configuration.duplicateFilterCapacity.map(DuplicateFilter.init(capacity:))
        self.waitTiers = configuration.retryPolicy.waitTiers
    }

    /// Runs the broker connection until graceful shutdown or cancellation.
    ///
    /// Throws when the broker refuses the configuration for a reason retrying will not change
    /// (``AMQPError/isPermanentRefusal``: wrong credentials or permissions (403), a missing virtual
    /// host (530), a queue declared differently before, e.g. classic where quorum is asked (406)),
    /// so a `ServiceGroup` stops and the service fails visibly. Transient failures (broker down,
    /// connection lost, a cluster node's queue unavailable) are retried with backoff for ever.
    public func run() async throws {
        try await amqp.run()
    }

    /// Decoded events in arrival order, across reconnects; finishes when the consumer stops, and
    /// throws the refusal when it stopped because the broker refused its configuration (see
    /// ``run()``). Iterate from one task; settle each delivery (concurrently if you like).
    public var deliveries: TutorCruncherDeliveries { TutorCruncherDeliveries(consumer: self) }

    /// `true` while connected to the broker with the subscription active (also while the broker
    /// blocks publishing: deliveries and acknowledgements still flow).
    public var isConnected: Bool {
        switch amqp.state {
        case .connected, .blocked: true
        default: false
        }
    }

    /// Handles one raw delivery: returns it typed, or disposes of it (delivered too often without
    /// being settled, redelivery recorded on a copy, duplicate, undecodable) and returns `nil`.
    func prepare(_ delivery: AMQPDelivery) async -> TutorCruncherDelivery? {
        let unsettled = Self.unsettledDeliveries(of: delivery.message)
        if unsettled >= configuration.retryPolicy.maxUnsettledDeliveries {
            logger.error(
                "event delivered too often without being settled; dead-lettering",
                metadata: ["routing_key": "\(delivery.message.routingKey)", "unsettled_deliveries": "\(unsettled)"])
            await deadLetter(
                delivery,
                reason: "delivered \(unsettled) times without being settled (the consumer crashed, lost its connection or requeued it)")
            return nil
        }
        if delivery.message.redelivered, delivery.message.properties.header(ConsumerHeader.brokerDeliveryCount) == nil {
            // A classic queue says only that this is a redelivery. Record it in a copy, which
            // survives a consumer crash, so that a message that kills the consumer stops coming back.
            do {
                try await requeue(delivery, unsettledDeliveries: unsettled)
                return nil
            } catch {
                logger.warning("could not record the redelivery; handling it anyway", metadata: ["error": "\(error)"])
            }
        }
        if Self.originalRoutingKey(of: delivery.message) == BridgeContract.unrecognisedRoutingKey {
            let reason: String
            if case .string(let text)? = delivery.message.properties.header(BridgeContract.Header.unrecognisedReason) {
                reason = text
            } else {
                reason = "not a TutorCruncher event"
            }
            switch configuration.unrecognisedBodies {
            case .skip:
                logger.debug("unrecognised message acknowledged without handling", metadata: ["reason": "\(reason)"])
                ConsumerMetrics.delivered(action: BridgeContract.unrecognisedRoutingKey, outcome: .skipped)
                try? await delivery.ack()
            case .deadLetter:
                await deadLetter(delivery, reason: "unrecognised: \(reason)")
            case .handle(let handler):
                var path: String?
                if case .string(let text)? = delivery.message.properties.header(BridgeContract.Header.requestPath) { path = text }
                let message = UnrecognisedMessage(
                    body: delivery.message.body, reason: reason, requestPath: path, messageID: delivery.message.properties.messageID)
                do {
                    try await handler(message)
                    ConsumerMetrics.delivered(action: BridgeContract.unrecognisedRoutingKey, outcome: .acknowledged)
                    try? await delivery.ack()
                } catch {
                    await deadLetter(delivery, reason: "unrecognised: handler failed: \(error)")
                }
            }
            return nil
        }
        let event: TutorCruncherEvent
        do {
            event = try TutorCruncherEvent(envelope: delivery.message.body)
        } catch {
            logger.error(
                "undecodable message; dead-lettering",
                metadata: ["routing_key": "\(delivery.message.routingKey)", "error": "\(error)"])
            await deadLetter(delivery, reason: "undecodable: \(error)")
            return nil
        }
        if let filteredOut = filteredOut(event) {
            logger.debug("event outside the configured filters acknowledged without handling", metadata: ["event_id": "\(event.eventID)", "filter": "\(filteredOut)"])
            ConsumerMetrics.delivered(action: event.action.rawValue, outcome: .skipped)
            try? await delivery.ack()
            return nil
        }
        if let duplicateFilter, duplicateFilter.contains(event.eventID) {
            logger.debug("duplicate event acknowledged without handling", metadata: ["event_id": "\(event.eventID)"])
            try? await delivery.ack()
            return nil
        }
        return TutorCruncherDelivery(event: event, delivery: delivery, consumer: self)
    }

    /// Which filter (`branches`, `subjectModels`) leaves `event` out, if any.
    func filteredOut(_ event: TutorCruncherEvent) -> String? {
        if !configuration.branches.isEmpty, let branch = event.branch, !configuration.branches.contains(branch) { return "branches" }
        if !configuration.subjectModels.isEmpty {
            guard let model = event.subject?.model, configuration.subjectModels.contains(model) else { return "subject_models" }
        }
        return nil
    }

    /// Publishes a copy of the message to the dead-letter queue with the error, then acknowledges it.
    /// If that cannot be confirmed (blocked, no confirm, nacked) the delivery is rejected instead, so
    /// the broker dead-letters it through the queue's dead-letter exchange without the error header;
    /// if the connection broke, the broker redelivers it. If the copy reached no queue (the
    /// dead-letter queue was deleted while the service runs: it is declared on connect), rejecting
    /// would send the event into the same missing queue, so the queue is declared again and the copy
    /// sent once more; failing that, the delivery goes back to the queue. Never lost, never left unsettled.
    ///
    /// A message near the frame size may have no room for the error header: then the copy carries
    /// only the original routing key, or failing that the message's own headers. Such a message is
    /// requeued rather than rejected when the copy cannot be sent: the broker's `x-death` header
    /// would take it past the frame size, and no one could read it from the dead-letter queue.
    func deadLetter(_ delivery: AMQPDelivery, reason: String) async {
        let kind = ["undecodable": "undecodable", "failed": "handler_failed", "unrecognised": "unrecognised", "unencodable": "unencodable"]
            .first { reason.hasPrefix($0.key) }?.value
        ConsumerMetrics.deadLettered(reason: kind ?? "other")
        let own = delivery.message.properties.headers.filter {
            ![ConsumerHeader.error, ConsumerHeader.originalQueue, ConsumerHeader.originalRoutingKey].contains($0.0)
        }
        let routingKey: (String, AMQPHeaderValue) = (ConsumerHeader.originalRoutingKey, .string(Self.originalRoutingKey(of: delivery.message)))
        let annotations: [[(String, AMQPHeaderValue)]] = [
            [(ConsumerHeader.error, .string(String(reason.prefix(1000)))), (ConsumerHeader.originalQueue, .string(configuration.queue)), routingKey],
            [routingKey],
            [],
        ]
        for (level, annotation) in annotations.enumerated() {
            var properties = delivery.message.properties
            properties.headers = own + annotation
            properties.persistent = true
            properties.expiration = nil  // a dead-lettered event stays until someone looks at it
            let copy = AMQPOutboundMessage(
                exchange: "", routingKey: configuration.deadLetterQueue, properties: properties, body: delivery.message.body, mandatory: true)
            do throws(AMQPError) {
                try await delivery.republishThenAck(copy)
                if level > 0 {
                    logger.warning(
                        "dead-lettered without the error header: the message has no room for it in the frame",
                        metadata: ["queue": "\(configuration.deadLetterQueue)", "reason": "\(reason.prefix(200))"])
                }
                return
            } catch where error.kind == .unencodable && level < annotations.count - 1 {
                continue  // less annotation
            } catch where error.kind == .unencodable {
                // Not even a copy of the message as it is can travel (its body, say): only the broker can move it.
                await reject(delivery, error)
                return
            } catch where error.isUnroutable {
                if await declareDeadLetterQueueAgain(), (try? await delivery.republishThenAck(copy)) != nil {
                    logger.warning("the dead-letter queue was missing; declared it again", metadata: ["queue": "\(configuration.deadLetterQueue)"])
                    return
                }
                await sendBack(delivery, because: "the dead-letter queue was missing, and the event could not be dead-lettered after declaring it again", error)
                return
            } catch where level > 0 {
                await sendBack(delivery, because: "could not publish to the dead-letter queue, and a reject's x-death header would not fit", error)
                return
            } catch {
                // Blocked, no confirm, or rejected: let the broker dead-letter it through the queue's
                // dead-letter exchange (without the error header) rather than hold it unsettled.
                await reject(delivery, error)
                return
            }
        }
    }

    /// `basic.reject`, for a dead-letter copy that could not be sent: the broker dead-letters it.
    private func reject(_ delivery: AMQPDelivery, _ error: AMQPError) async {
        do {
            try await delivery.reject()
            logger.warning(
                "could not publish to the dead-letter queue; rejected it into the dead-letter queue without the error header",
                metadata: ["error": "\(error)"])
        } catch let rejectError {
            logger.warning("could not dead-letter; the message will be redelivered", metadata: ["error": "\(error)", "reject_error": "\(rejectError)"])
        }
    }

    /// `basic.nack` with requeue, for a dead-letter copy that could not be sent: logs `why` at error level.
    private func sendBack(_ delivery: AMQPDelivery, because why: String, _ error: AMQPError) async {
        do {
            try await delivery.nack(requeue: true)
            logger.error("\(why); it goes back to the queue", metadata: ["queue": "\(configuration.deadLetterQueue)", "error": "\(error)"])
        } catch let nackError {
            logger.warning("could not dead-letter; the message will be redelivered", metadata: ["error": "\(error)", "nack_error": "\(nackError)"])
        }
    }

    /// Declares the dead-letter queue as on connect, on a connection of its own; `false` (logged) if that failed.
    private func declareDeadLetterQueueAgain() async -> Bool {
        let amqp = configuration.amqpConfiguration
        guard let declaration = amqp.queues.first(where: { $0.name == configuration.deadLetterQueue }) else { return false }
        do {
            try await AMQPAdmin(connection: amqp.connection).declare(queues: [declaration])
            return true
        } catch {
            logger.error("could not declare the dead-letter queue again", metadata: ["queue": "\(configuration.deadLetterQueue)", "error": "\(error)"])
            return false
        }
    }

    /// Sends a copy with the attempt count raised to wait `wait` before its next attempt, then
    /// acknowledges the original: into the shortest wait queue at least that long (the message
    /// expiring after `wait` itself), or, with no wait or no wait queues, to the back of the queue.
    func requeueForRetry(_ delivery: AMQPDelivery, attempt: Int, wait: Duration) async throws(AMQPError) {
        let unsettled = Self.unsettledDeliveries(of: delivery.message)
        guard wait > .zero, let tier = waitTiers.first(where: { $0 >= wait }) ?? waitTiers.last else {
            try await requeue(delivery, attempt: attempt + 1, unsettledDeliveries: unsettled)
            return
        }
        // The queue's TTL is the tier; a shorter wait expires the message itself.
        let milliseconds = TutorCruncherConsumerConfiguration.RetryPolicy.milliseconds
        let expiration = milliseconds(wait) < milliseconds(tier) ? String(milliseconds(wait)) : nil
        try await requeue(
            delivery, attempt: attempt + 1, unsettledDeliveries: unsettled, to: configuration.waitQueue(for: tier), expiration: expiration)
    }

    /// Room a copy sent to a wait queue must leave in the frame (RabbitMQ's and rabbitmq-c's default,
    /// 128 KiB) for the `x-death` and `x-first-death-*` headers the broker adds when the wait ends.
    /// Without it the copy would come back larger than the frame, and no consumer could read it.
    static let waitQueueHeadroom = 4096
    static let defaultFrameSize = 131_072

    /// Re-queues a copy carrying the attempt and unsettled-delivery counts (at the back of the
    /// queue, or into `waitQueue` with a per-message `expiration`), then acknowledges the original.
    /// Throws (leaving the original unsettled) when that fails; `.unencodable` when the copy cannot
    /// travel, or would not leave the headroom a wait queue needs.
    func requeue(
        _ delivery: AMQPDelivery, attempt: Int? = nil, unsettledDeliveries: Int, to waitQueue: String? = nil, expiration: String? = nil
    ) async throws(AMQPError) {
        var properties = delivery.message.properties
        let replaced = [
            ConsumerHeader.originalRoutingKey, ConsumerHeader.unsettledDeliveries, ConsumerHeader.brokerDeliveryCount,
        ] + (attempt == nil ? [] : [ConsumerHeader.attempt])
        properties.headers = properties.headers.filter { !replaced.contains($0.0) }
        if let attempt { properties.headers.append((ConsumerHeader.attempt, .int(Int64(attempt)))) }
        properties.headers.append((ConsumerHeader.originalRoutingKey, .string(Self.originalRoutingKey(of: delivery.message))))
        if unsettledDeliveries > 0 {
            properties.headers.append((ConsumerHeader.unsettledDeliveries, .int(Int64(unsettledDeliveries))))
        }
        properties.persistent = true
        properties.expiration = expiration
        // `mandatory`: a copy that reaches no queue fails the call (the original stays) instead of vanishing.
        let copy = AMQPOutboundMessage(
            exchange: "", routingKey: waitQueue ?? configuration.queue, properties: properties, body: delivery.message.body, mandatory: true)
        if waitQueue != nil, let problem = copy.encodingProblem(frameSize: Self.defaultFrameSize - Self.waitQueueHeadroom) {
            throw AMQPError(.unencodable, "\(problem), less \(Self.waitQueueHeadroom) bytes for the headers a wait queue adds")
        }
        try await delivery.republishThenAck(copy)
    }

    /// Deliveries of this message's event that ended without being settled before this one: the
    /// count recorded on the copy, plus the quorum queue's `x-delivery-count`, or one when a
    /// classic queue says this is a redelivery.
    static func unsettledDeliveries(of message: AMQPInboundMessage) -> Int {
        var count = 0
        if case .int(let recorded)? = message.properties.header(ConsumerHeader.unsettledDeliveries), recorded > 0 {
            count = Int(clamping: recorded)
        }
        if case .int(let brokerCount)? = message.properties.header(ConsumerHeader.brokerDeliveryCount), brokerCount > 0 {
            let (sum, overflow) = count.addingReportingOverflow(Int(clamping: brokerCount))
            count = overflow ? .max : sum
        } else if message.redelivered, count < .max {
            count += 1
        }
        return count
    }

    /// The routing key the bridge published `message` with (the action), also for a copy the
    /// consumer re-queued or a wait queue dead-lettered back under the queue's name.
    static func originalRoutingKey(of message: AMQPInboundMessage) -> String {
        if case .string(let key)? = message.properties.header(ConsumerHeader.originalRoutingKey) { return key }
        return message.routingKey
    }
}

/// The typed events of a ``TutorCruncherConsumer``.
public struct TutorCruncherDeliveries: AsyncSequence, Sendable {
    public typealias Element = TutorCruncherDelivery
    let consumer: TutorCruncherConsumer

    public struct AsyncIterator: AsyncIteratorProtocol {
        var base: AMQPDeliveries.AsyncIterator
        let consumer: TutorCruncherConsumer

        public mutating func next() async throws(AMQPError) -> TutorCruncherDelivery? {
            while let delivery = await base.next() {
                if let prepared = await consumer.prepare(delivery) { return prepared }
            }
            if let refusal = consumer.amqp.failure { throw refusal }
            return nil
        }
    }

    public func makeAsyncIterator() -> AsyncIterator {
        AsyncIterator(base: consumer.amqp.deliveries.makeAsyncIterator(), consumer: consumer)
    }
}

/// One event to handle. Settle it exactly once: ``ack()``, ``retry(because:)`` or ``retry(after:because:)``, ``nack(requeue:)``
/// or ``reject(reason:)``.
///
/// At-least-once: the same event can arrive again (after a broker restart, a lost acknowledgement,
/// or a TutorCruncher retry of the same webhook); ``redelivered`` and the stable
/// ``TutorCruncherEvent/eventID`` let handlers stay idempotent.
public struct TutorCruncherDelivery: Sendable {
    public let event: TutorCruncherEvent
    let delivery: AMQPDelivery
    let consumer: TutorCruncherConsumer

    /// The event was delivered before and that delivery was not settled: the broker says so, or
    /// this is the copy the consumer re-queued to count a classic queue's redelivery.
    public var redelivered: Bool {
        if delivery.message.redelivered { return true }
        if case .int(let count)? = delivery.message.properties.header(ConsumerHeader.unsettledDeliveries), count > 0 { return true }
        return false
    }

    /// The connection this event came on has broken: settling it can only fail, and the broker
    /// delivers it again. A handler not yet started on it is better skipped.
    public var isStale: Bool { delivery.isStale }

    /// Which attempt this is (1 for the first delivery; raised by each retry).
    public var attempt: Int {
        if case .int(let value)? = delivery.message.properties.header(ConsumerHeader.attempt), value >= 1 { return Int(value) }
        return 1
    }

    /// Done: the broker forgets the event.
    public func ack() async throws(AMQPError) {
        try await delivery.ack()
        consumer.duplicateFilter?.insert(event.eventID)
    }

    /// Try again after the retry policy's next wait, until its `maxAttempts` are used up; then
    /// dead-lettered with `error` in the `tc-error` header (and an error log line).
    ///
    /// The event waits on the broker (see ``TutorCruncherConsumerConfiguration/RetryPolicy``), not
    /// in this process. When the copy cannot be sent (the broker blocks publishing or does not
    /// confirm) the delivery is requeued as it is (`basic.nack`), which counts towards the retry
    /// policy's `maxUnsettledDeliveries`, and the error is thrown. When no copy can be encoded (the
    /// message's properties fill the frame, or leave no room for a wait queue's headers) it goes to
    /// the dead-letter queue as it is instead and `.unencodable` is thrown. Never leaves the delivery
    /// unsettled on a working connection.
    public func retry(because error: any Error) async throws(AMQPError) {
        try await carryOut(consumer.configuration.retryPolicy.decision(afterFailedAttempt: attempt, error: "\(error)"), error: "\(error)")
    }

    /// Try again in `delay` (at most the retry policy's `maxDelay`; the wait ends between `delay`
    /// and the shortest of the policy's waits that is at least as long) instead of the policy's
    /// next wait. Counts as an attempt: after `maxAttempts` the event is dead-lettered. With a
    /// policy without waits (`initialDelay: .zero`) there are no wait queues: it is re-queued at once.
    public func retry(after delay: Duration, because error: (any Error)? = nil) async throws(AMQPError) {
        let reason = error.map { "\($0)" } ?? "retry requested"
        try await carryOut(consumer.configuration.retryPolicy.decision(afterFailedAttempt: attempt, error: reason, requestedWait: delay), error: reason)
    }

    @available(*, deprecated, renamed: "retry(because:)", message: "retry(after:) now takes a delay")
    public func retry(after error: any Error) async throws(AMQPError) {
        try await retry(because: error)
    }

    private func carryOut(_ decision: TutorCruncherConsumerConfiguration.FailureDecision, error: String) async throws(AMQPError) {
        let wait: Duration
        switch decision {
        case .deadLetter(let reason):
            consumer.logger.error(
                "event failed its last attempt; dead-lettering",
                metadata: ["event_id": "\(event.eventID)", "action": "\(event.action)", "attempts": "\(attempt)", "error": "\(error)"])
            await consumer.deadLetter(delivery, reason: reason)
            return
        case .retry(let after):
            wait = after
        }
        do throws(AMQPError) {
            try await consumer.requeueForRetry(delivery, attempt: attempt, wait: wait)
            ConsumerMetrics.retried()
        } catch where error.kind == .unencodable {
            // The message's properties leave no room in the frame for the attempt count: no copy of
            // it can ever be sent, and one requeued as it is would come straight back, fail, and be
            // requeued again, for ever (a classic queue's redelivery cannot be recorded either).
            consumer.logger.error(
                "the retry copy cannot be encoded; dead-lettering the event as it is",
                metadata: ["event_id": "\(event.eventID)", "action": "\(event.action)", "error": "\(error)"])
            await consumer.deadLetter(delivery, reason: "unencodable retry copy: \(error.message)")
            throw AMQPError(.unencodable, "the retry copy cannot be encoded (\(error.message)); the event was dead-lettered as it is")
        } catch {
            ConsumerMetrics.retried()
            try? await delivery.nack(requeue: true)
            throw error
        }
    }

    /// Plain `basic.nack`: back into the queue as is (`requeue`), or to the dead-letter queue by the
    /// broker (without an error header) when `requeue` is false.
    public func nack(requeue: Bool) async throws(AMQPError) {
        try await delivery.nack(requeue: requeue)
    }

    /// Straight to the dead-letter queue with `reason` in the `tc-error` header.
    public func reject(reason: String) async {
        await consumer.deadLetter(delivery, reason: reason)
    }
}

/// What a handler may want to know about the delivery of its event besides the event itself.
public struct TutorCruncherDeliveryContext: Sendable {
    /// Which attempt this is (1 for the first; raised by each retry).
    public let attempt: Int
    /// The event was delivered before and that delivery was not settled (see
    /// ``TutorCruncherDelivery/redelivered``).
    public let redelivered: Bool
    /// The AMQP `message_id`: the event's stable id (`<body sha256>-<index>`).
    public let messageID: String?
    /// The routing key the bridge published with (the action), also for retried copies.
    public let routingKey: String
    /// Every AMQP header of the message, in order (the bridge's `tc-*` headers, `traceparent`, and
    /// the consumer library's own, such as `tc-attempt`).
    public let headers: [(String, AMQPHeaderValue)]

    /// A context as a delivery would carry it (for tests: see the `TutorCruncherConsumerTesting` library).
    public init(attempt: Int, redelivered: Bool, messageID: String?, routingKey: String, headers: [(String, AMQPHeaderValue)] = []) {
        self.attempt = attempt
        self.redelivered = redelivered
        self.messageID = messageID
        self.routingKey = routingKey
        self.headers = headers
    }

    init(_ delivery: TutorCruncherDelivery) {
        attempt = delivery.attempt
        redelivered = delivery.redelivered
        messageID = delivery.delivery.message.properties.messageID
        routingKey = TutorCruncherConsumer.originalRoutingKey(of: delivery.delivery.message)
        headers = delivery.delivery.message.properties.headers
    }

    /// The value of header `name`, if present.
    public func header(_ name: String) -> AMQPHeaderValue? {
        headers.first { $0.0 == name }?.1
    }
}
