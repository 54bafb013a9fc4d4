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

    /// What happens when handling fails.
    public struct RetryPolicy: Sendable, Equatable {
        /// Handler attempts per event, the first included (default 3). After the last failure the
        /// event goes to the dead-letter queue with the error in the `tc-error` header.
        public var maxAttempts: Int
        /// Deliveries of one event that may end without being settled (the consumer crashed or lost
        /// its connection while handling it, or it was requeued with `nack(requeue: true)`) before
        /// the next delivery sends it to the dead-letter queue instead of to a handler (default 5).
        /// A message that kills the consumer therefore ends in the dead-letter queue, never in an
        /// endless loop. Counted from quorum queues' `x-delivery-count`, or for classic queues in the
        /// `tc-unsettled-deliveries` header of a copy re-queued on each redelivery.
        public var maxUnsettledDeliveries: Int

        public init(maxAttempts: Int = 3, maxUnsettledDeliveries: Int = 5) {
            precondition(maxAttempts >= 1, "maxAttempts must be at least 1")
            precondition(maxUnsettledDeliveries >= 1, "maxUnsettledDeliveries must be at least 1")
            self.maxAttempts = maxAttempts
            self.maxUnsettledDeliveries = maxUnsettledDeliveries
        }
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
    /// Most events in flight (unacknowledged) at once; also the handler concurrency (default 20).
    public var prefetch: UInt16
    /// Classic (default) or quorum; applies to the queue and its dead-letter queue.
    public var queueType: QueueType
    /// Where failed and undecodable events go (default `<queue>.dead-letter`).
    public var deadLetterQueue: String
    public var retryPolicy: RetryPolicy
    /// Opt-in: remember this many recently handled `eventID`s and acknowledge repeats without
    /// handing them out again (default `nil`: off). In memory, per process: a best effort on top of,
    /// not instead of, idempotent handling.
    public var duplicateFilterCapacity: Int?
    /// Delay between reconnect attempts after the broker goes away.
    public var reconnectBackoff: AMQPBackoff
    /// On graceful shutdown, how long in-flight events may take to finish (default 30 s); what is
    /// still unacknowledged then is redelivered later.
    public var shutdownTimeout: Duration
    /// How long a re-queue or dead-letter publish may take, waiting while the broker blocks
    /// publishing and then for its confirm (default 5 s).
    public var confirmTimeout: Duration = .seconds(5)
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
                AMQPQueueDeclaration(
                    name: queue, durable: true,
                    arguments: typeArgument.merging([
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
        return configuration
    }
}
