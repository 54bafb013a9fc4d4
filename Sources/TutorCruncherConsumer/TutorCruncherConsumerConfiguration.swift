import DurationUnits
import TCBridgeContract
import AMQPClient
import TutorCruncher
import Tracing

/// How a service subscribes to TutorCruncher events. Every field has a documented default except
/// the queue name, which identifies the service: two services with different queues each get their
/// own copy of every event; instances of one service sharing a queue share the work.
public struct TutorCruncherConsumerConfiguration: Sendable {
    /// The queue's kind. Quorum queues are replicated (RabbitMQ clusters); classic is the default.
    public enum QueueType: String, Sendable {
        case classic
        case quorum
    }

    /// What happens when handling fails: how often, and how long the event waits before each new
    /// attempt.
    ///
    /// A waiting event is not held by the consumer: it waits in a wait queue on the broker
    /// (`<queue>.retry.<milliseconds>ms`, a quorum queue per distinct delay, dead-lettering back into
    /// the queue when the time is up), so it survives restarts of the service and the broker and
    /// takes no prefetch slot. Wait queues of an older policy stay behind, empty, once their events
    /// are back: delete them once no instance of the service uses that policy any more (a copy
    /// sent to a deleted wait queue is lost). The broker user needs configure permission on
    /// `<queue>.retry.*` (declared on connect). With the defaults an event is tried 5 times over about a minute and a quarter
    /// (waits of 5, 10, 20 and 40 s, each shortened by up to 20% at random) before it is dead-lettered.
    public struct RetryPolicy: Sendable, Equatable {
        /// Handler attempts per event, the first included (default 5). After the last failure the
        /// event goes to the dead-letter queue with the error in the `tc-error` header.
        public var maxAttempts: Int
        /// The wait after the first failure (default 5 s). `.zero` re-queues failed events at the
        /// back of the queue at once, as before wait queues existed.
        public var initialDelay: Duration
        /// Each further wait is the previous one times this (default 2).
        public var multiplier: Double
        /// No wait is longer (default 5 minutes); also the longest `retry(after:)` honours.
        public var maxDelay: Duration
        /// Each wait is shortened by a random fraction of up to this much (default 0.2), so events
        /// that failed at different moments spread out. 0 to 1. (A wait queue releases events in
        /// order: a burst that failed at the same instant comes back as the running maximum of
        /// its waits, close to the full wait.)
        public var jitter: Double
        /// Deliveries of one event that may end without being settled (the consumer crashed or lost
        /// its connection while handling it, or it was requeued with `nack(requeue: true)`) before
        /// the next delivery sends it to the dead-letter queue instead of to a handler (default 5).
        /// A message that kills the consumer therefore ends in the dead-letter queue, never in an
        /// endless loop. Counted from quorum queues' `x-delivery-count`, or for classic queues in the
        /// `tc-unsettled-deliveries` header of a copy re-queued on each redelivery.
        public var maxUnsettledDeliveries: Int

        public init(
            maxAttempts: Int = 5, initialDelay: Duration = .seconds(5), multiplier: Double = 2, maxDelay: Duration = .seconds(300),
            jitter: Double = 0.2, maxUnsettledDeliveries: Int = 5
        ) {
            precondition(maxAttempts >= 1, "maxAttempts must be at least 1")
            precondition(maxUnsettledDeliveries >= 1, "maxUnsettledDeliveries must be at least 1")
            precondition(initialDelay >= .zero && maxDelay >= .zero, "delays cannot be negative")
            precondition(multiplier >= 1 && multiplier.isFinite, "multiplier must be at least 1")
            precondition((0...1).contains(jitter), "jitter is a fraction from 0 to 1")
            self.maxAttempts = maxAttempts
            self.initialDelay = initialDelay
            self.multiplier = multiplier
            self.maxDelay = maxDelay
            self.jitter = jitter
            self.maxUnsettledDeliveries = maxUnsettledDeliveries
        }

        /// The wait after attempt `attempt` (from 1) failed, before jitter, in whole milliseconds:
        /// `initialDelay × multiplier^(attempt − 1)`, at most `maxDelay`.
        public func delay(afterAttempt attempt: Int) -> Duration {
            let initial = Self.milliseconds(initialDelay)
            guard initial > 0 else { return .zero }
            let cap = Self.milliseconds(maxDelay)
            var value = Double(initial)
            // `attempt` may come from a message header: the loop stops once the cap is reached.
            var step = 1
            while step < attempt, value < Double(cap), multiplier > 1 {
                value *= multiplier
                step += 1
            }
            return .milliseconds(value < Double(cap) ? Int64(value) : cap)
        }

        /// The waits events can be given, longest last: one wait queue each. Those of the policy,
        /// and `maxDelay` (for ``TutorCruncherDelivery/retry(after:because:)``) when delays are on.
        /// At most a few dozen whatever `maxAttempts` is: the schedule stops growing at `maxDelay`.
        var waitTiers: [Duration] {
            guard initialDelay > .zero, maxAttempts > 1 else { return [] }
            let cap = Duration.milliseconds(Self.milliseconds(maxDelay))
            var waits: Set<Duration> = [cap]
            var attempt = 1
            // The schedule grows only until the cap (not at all with a multiplier of 1); a
            // multiplier barely above 1 would make thousands of waits: at most 32 queues.
            while attempt < maxAttempts, waits.count < 32 {
                let wait = delay(afterAttempt: attempt)
                if wait > .zero { waits.insert(wait) }
                if wait >= cap || multiplier <= 1 { break }
                attempt += 1
            }
            return waits.sorted()
        }

        /// What becomes of an event whose handler failed on attempt `attempt` (from 1) with `error`:
        /// the policy's next wait (jittered), or `requestedWait` (at most `maxDelay`) when the
        /// handler asked for one, or the dead-letter queue once `maxAttempts` are used up. The
        /// decision ``TutorCruncherDelivery/retry(because:)`` carries out, and the one the test kit
        /// records.
        public func decision(afterFailedAttempt attempt: Int, error: String, requestedWait: Duration? = nil) -> FailureDecision {
            if attempt >= maxAttempts {
                return .deadLetter(reason: "failed \(attempt) times; last error: \(error)")
            }
            if let requestedWait { return .retry(after: min(max(requestedWait, .zero), maxDelay)) }
            return .retry(after: jittered(delay(afterAttempt: attempt)))
        }

        /// `delay` shortened by a random fraction of up to `jitter`.
        func jittered(_ delay: Duration) -> Duration {
            let milliseconds = Self.milliseconds(delay)
            guard jitter > 0, milliseconds > 1 else { return delay }
            let cut = Double(milliseconds) * jitter * Double.random(in: 0...1)
            return .milliseconds(milliseconds - Int64(cut))
        }

        /// Whole milliseconds, at least 0.
        static func milliseconds(_ duration: Duration) -> Int64 { max(0, duration.clampedMilliseconds) }
    }

    /// What to do with the bridge's `unrecognised` messages (bodies or events that are not a
    /// TutorCruncher event, published unchanged under routing key `unrecognised`), which a
    /// consumer of every action (`actions: []`, bound to `#`) also receives.
    public enum UnrecognisedBodies: Sendable {
        /// Acknowledge them without a handler, counted as `tcconsumer_deliveries_total{outcome="skipped"}`
        /// and logged at debug (the default).
        case skip
        /// Send them to the dead-letter queue with the bridge's reason in `tc-error`, for someone to look at.
        case deadLetter
        /// Hand each to `handler` as an ``UnrecognisedMessage``, then acknowledge it; a throw sends
        /// it to the dead-letter queue with the error. Runs in the delivery loop: keep it short.
        case handle(@Sendable (UnrecognisedMessage) async throws -> Void)
    }

    /// The bridge's alternate exchange (default `<exchange>.unroutable`, as `tc-bridge` declares it;
    /// `nil` if the bridge runs with `--alternate-exchange none`). Only used when this consumer is the
    /// first to create the exchange, so that it matches the bridge's declaration.
    public var alternateExchange: String?
    /// Broker connection (default `amqp://guest:guest@127.0.0.1:5672/%2F`).
    public var connection: AMQPConnectionConfiguration
    /// Further brokers (a cluster's other nodes), tried in order when `connection` cannot be
    /// reached; every reconnect starts again from `connection`.
    public var failoverConnections: [AMQPConnectionConfiguration] = []
    /// The bridge's topic exchange (default `tutorcruncher`). Created if missing; never redeclared
    /// with different arguments.
    public var exchange: String
    /// The service's durable queue.
    public var queue: String
    /// Actions to bind; empty (the default) binds every action (`#`). Bindings are only ever added:
    /// removing an action here does not unbind it from an existing queue.
    public var actions: [TutorCruncherAction]
    /// Most events in flight (unacknowledged) at once (default 20).
    public var prefetch: UInt16
    /// Most handlers ``TutorCruncherEventProcessor`` runs at once (default `nil`: `prefetch`). Lower
    /// keeps events at hand for the next free handler; never more than `prefetch`.
    public var concurrency: Int?
    /// ``TutorCruncherEventProcessor`` handles events of the same subject (model and id: two edits
    /// of one Tutor) one at a time, in the order they arrived; other subjects still run
    /// concurrently (default `false`). A retried event comes back after its wait, behind later ones.
    public var orderedBySubject = false
    /// Classic (default) or quorum; applies to the queue and its dead-letter queue.
    public var queueType: QueueType
    /// Where failed and undecodable events go (default `<queue>.dead-letter`).
    public var deadLetterQueue: String
    public var retryPolicy: RetryPolicy
    /// The bridge's `unrecognised` messages: skipped quietly (the default) or dead-lettered.
    public var unrecognisedBodies: UnrecognisedBodies = .skip
    /// Only events of these branches (TutorCruncher's `branch` id, the `tc-branch` header) reach
    /// the service; others are acknowledged without a handler and counted as skipped. Empty (the
    /// default): every branch. Events without a branch (older payloads) are kept.
    public var branches: Set<Int> = []
    /// Only events whose subject is one of these models (`subject.model`, e.g. `Tutor`,
    /// `Invoice`; the `tc-subject-model` header) reach the service; others are skipped. Empty (the
    /// default): every model. Bindings still select by action: this narrows further, on the consumer.
    public var subjectModels: Set<SubjectType> = []
    /// Optional broker-side limits of the service's queue, applied when the queue is created (a
    /// queue that exists with other settings makes the consumer fail fast: see ``TutorCruncherConsumer/run()``).
    public var queueOptions = QueueOptions()

    /// Broker-side settings of the service's queue. `nil` leaves each to the broker's default.
    public struct QueueOptions: Sendable, Equatable {
        /// What a full queue (``maxLength``) does with a new event.
        public enum Overflow: String, Sendable {
            /// Drop the oldest (the broker's default).
            case dropHead = "drop-head"
            /// Refuse the new one: the bridge's publish is nacked and it spools and retries (no loss).
            case rejectPublish = "reject-publish"
            /// Refuse it into the dead-letter queue (classic queues only).
            case rejectPublishDeadLetter = "reject-publish-dlx"
        }

        /// Events older than this are dead-lettered (`x-message-ttl`).
        public var messageTTL: Duration?
        /// Most events the queue keeps (`x-max-length`), and what happens beyond (`x-overflow`).
        public var maxLength: Int?
        public var overflow: Overflow?
        /// Only one consumer of the queue receives at a time, the others standing by
        /// (`x-single-active-consumer`): strict order with a hot standby.
        public var singleActiveConsumer: Bool
        /// Quorum queues: deliveries after which the broker itself dead-letters an event (`x-delivery-limit`).
        public var deliveryLimit: Int?

        public init(
            messageTTL: Duration? = nil, maxLength: Int? = nil, overflow: Overflow? = nil, singleActiveConsumer: Bool = false,
            deliveryLimit: Int? = nil
        ) {
            self.messageTTL = messageTTL
            self.maxLength = maxLength
            self.overflow = overflow
            self.singleActiveConsumer = singleActiveConsumer
            self.deliveryLimit = deliveryLimit
        }

        var arguments: [String: AMQPHeaderValue] {
            var arguments: [String: AMQPHeaderValue] = [:]
            if let messageTTL { arguments["x-message-ttl"] = .int(RetryPolicy.milliseconds(messageTTL)) }
            if let maxLength { arguments["x-max-length"] = .int(Int64(maxLength)) }
            if let overflow { arguments["x-overflow"] = .string(overflow.rawValue) }
            if singleActiveConsumer { arguments["x-single-active-consumer"] = .bool(true) }
            if let deliveryLimit { arguments["x-delivery-limit"] = .int(Int64(deliveryLimit)) }
            return arguments
        }
    }
    /// Opt-in: remember this many recently handled `eventID`s and acknowledge repeats without
    /// handing them out again (default `nil`: off). In memory, per process: a best effort on top of,
    /// not instead of, idempotent handling.
    public var duplicateFilterCapacity: Int?
    /// Delay between reconnect attempts after the broker goes away.
    public var reconnectBackoff: AMQPBackoff
    /// On graceful shutdown, how long in-flight events may take to finish (default 30 s); what is
    /// still unacknowledged then is redelivered later. A re-queue or dead-letter publish already
    /// waiting for its confirm at that moment may finish within ``confirmTimeout`` more; none is
    /// started after it. So shutdown takes at most `shutdownTimeout + confirmTimeout`.
    public var shutdownTimeout: Duration
    /// How long a re-queue or dead-letter publish may take, waiting while the broker blocks
    /// publishing and then for its confirm (default 15 s: a quorum wait queue declared moments
    /// before takes seconds to elect its leader and confirm its first message on a busy broker).
    public var confirmTimeout: Duration = .seconds(15)
    /// The tracer ``TutorCruncherEventProcessor`` runs each handler in a span of: a `consumer`
    /// span continuing the trace the bridge's `traceparent` header carries (when the bridge runs
    /// with tracing on). `nil` (the default): the process's `InstrumentationSystem.tracer`, a no-op
    /// unless the service bootstraps one (e.g. swift-otel's `OTel.bootstrap()`).
    public var tracer: (any Tracer)? = nil

    public init(
        connection: AMQPConnectionConfiguration = AMQPConnectionConfiguration(),
        exchange: String = BridgeContract.defaultExchange,
        queue: String,
        actions: [TutorCruncherAction] = [],
        prefetch: UInt16 = 20,
        queueType: QueueType = .classic,
        deadLetterQueue: String? = nil,
        retryPolicy: RetryPolicy = RetryPolicy(),
        duplicateFilterCapacity: Int? = nil,
        reconnectBackoff: AMQPBackoff = AMQPBackoff(),
        shutdownTimeout: Duration = .seconds(30)
    ) {
        precondition(prefetch > 0, "prefetch must be positive")
        self.connection = connection
        self.exchange = exchange
        self.alternateExchange = BridgeContract.alternateExchange(for: exchange)
        self.queue = queue
        self.actions = actions
        self.prefetch = prefetch
        self.queueType = queueType
        self.deadLetterQueue = deadLetterQueue ?? "\(queue).dead-letter"
        self.retryPolicy = retryPolicy
        self.duplicateFilterCapacity = duplicateFilterCapacity
        self.reconnectBackoff = reconnectBackoff
        self.shutdownTimeout = shutdownTimeout
    }

    /// The same, with the connection from an AMQP URL (`amqp://` or `amqps://`), or several separated
    /// by commas (a cluster's nodes, preferred first; as `tc-bridge` reads `AMQP_URL`).
    public init(
        url: String,
        exchange: String = BridgeContract.defaultExchange,
        queue: String,
        actions: [TutorCruncherAction] = [],
        prefetch: UInt16 = 20
    ) throws(AMQPConfigurationError) {
        var connections: [AMQPConnectionConfiguration] = []
        for part in url.split(separator: ",") where !part.allSatisfy(\.isWhitespace) {
            var connection = try AMQPConnectionConfiguration(url: String(part.drop(while: \.isWhitespace).reversed().drop(while: \.isWhitespace).reversed()))
            connection.connectionName = "tc-consumer \(queue)"
            connections.append(connection)
        }
        guard let first = connections.first else { throw .invalidURL("no URL given") }
        self.init(connection: first, exchange: exchange, queue: queue, actions: actions, prefetch: prefetch)
        self.failoverConnections = Array(connections.dropFirst())
    }

    /// What becomes of an event whose handler failed (see ``RetryPolicy/decision(afterFailedAttempt:error:requestedWait:)``).
    public enum FailureDecision: Sendable, Equatable {
        /// Handled again after this wait (`.zero`: at once, at the back of the queue).
        case retry(after: Duration)
        /// Sent to the dead-letter queue with this reason in `tc-error`.
        case deadLetter(reason: String)
    }

    /// The wait queue where events wait `delay` before their next attempt: a quorum queue (replicated
    /// in a cluster; confirms as soon as the copy is committed) with that message TTL, dead-lettering
    /// back into ``queue``. Needs RabbitMQ 3.10 or later (quorum queue TTL). A classic queue with a
    /// TTL held publisher confirms back for seconds here when several waited at once.
    public func waitQueue(for delay: Duration) -> String {
        "\(queue).retry.\(RetryPolicy.milliseconds(delay))ms"
    }

    /// The queues, bindings and exchange this configuration declares.
    var amqpConfiguration: AMQPConsumerConfiguration {
        let typeArgument: [String: AMQPHeaderValue] = ["x-queue-type": .string(queueType.rawValue)]
        let keys = actions.isEmpty ? ["#"] : actions.map(\.rawValue)
        var configuration = AMQPConsumerConfiguration(
            connection: connection,
            exchanges: [
                AMQPExchangeDeclaration(
                    name: exchange, kind: .topic, durable: true,
                    arguments: alternateExchange.map { ["alternate-exchange": .string($0)] } ?? [:],
                    mode: .declareIfMissing)
            ],
            queues: [
                AMQPQueueDeclaration(name: deadLetterQueue, durable: true, arguments: typeArgument),
            ] + retryPolicy.waitTiers.map { wait in
                AMQPQueueDeclaration(
                    name: waitQueue(for: wait), durable: true,
                    arguments: [
                        "x-queue-type": .string("quorum"),
                        "x-message-ttl": .int(RetryPolicy.milliseconds(wait)),
                        "x-dead-letter-exchange": .string(""),
                        "x-dead-letter-routing-key": .string(queue),
                        // Back into the queue with a confirm, retried until it takes the event
                        // (full, restarting, its node away): never dropped on the way.
                        "x-dead-letter-strategy": .string("at-least-once"),
                        "x-overflow": .string("reject-publish"),
                    ])
            } + [
                AMQPQueueDeclaration(
                    name: queue, durable: true,
                    arguments: typeArgument.merging(queueOptions.arguments) { $1 }.merging([
                        "x-dead-letter-exchange": .string(""),
                        "x-dead-letter-routing-key": .string(deadLetterQueue),
                    ]) { $1 },
                    bindings: keys.map { AMQPQueueDeclaration.Binding(exchange: exchange, routingKey: $0) }),
            ],
            queue: queue,
            prefetch: prefetch,
            reconnectBackoff: reconnectBackoff,
            shutdownTimeout: shutdownTimeout,
            confirmTimeout: confirmTimeout)
        configuration.failoverConnections = failoverConnections
        configuration.stopOnPermanentRefusal = true
        return configuration
    }
}

/// A body the bridge published under `unrecognised`: not a TutorCruncher event (another sender, a
/// changed payload format), kept exactly as it arrived.
public struct UnrecognisedMessage: Sendable {
    /// The body as received by the bridge.
    public let body: [UInt8]
    /// Why the bridge did not recognise it (`tc-unrecognised-reason`).
    public let reason: String
    /// The HTTP path it was posted to (`tc-request-path`), if known.
    public let requestPath: String?
    /// The message id (`<body sha256>-raw` for whole bodies).
    public let messageID: String?

    public init(body: [UInt8], reason: String, requestPath: String?, messageID: String?) {
        self.body = body
        self.reason = reason
        self.requestPath = requestPath
        self.messageID = messageID
    }
}
