import AMQPClient
import TCBridgeContract

/// What the bridge declares on every connect: its topic exchange and, unless turned off, an
/// alternate exchange feeding a bounded durable queue that keeps events no service has bound to yet.
public struct BridgeTopology: Sendable {
    public var exchange: String
    /// Fanout exchange receiving what the main exchange cannot route (`nil`: none; such events are
    /// returned to the bridge, counted and logged, and dropped by the broker).
    public var alternateExchange: String?
    /// The queue bound to the alternate exchange; same name as it.
    public var unroutableQueue: String? { alternateExchange }
    /// Most messages the unroutable queue keeps; the oldest are dropped beyond it. Applies when the
    /// queue is created: an existing queue declared with another length is used as it is.
    public var unroutableMaxLength: Int
    /// `x-queue-type` of the unroutable queue: `classic` (default) or `quorum` (replicated across a
    /// cluster's nodes: survives the loss of a minority of them). Applies when the queue is created.
    public var unroutableQueueType: String

    public init(exchange: String, alternateExchange: String?, unroutableMaxLength: Int = 100_000, unroutableQueueType: String = "classic") {
        self.exchange = exchange
        self.alternateExchange = alternateExchange
        self.unroutableMaxLength = unroutableMaxLength
        self.unroutableQueueType = unroutableQueueType
    }

    /// Default alternate exchange name for `exchange`.
    public static func defaultAlternateExchange(for exchange: String) -> String { BridgeContract.alternateExchange(for: exchange) }

    public var exchanges: [AMQPExchangeDeclaration] {
        var main = AMQPExchangeDeclaration(name: exchange, kind: .topic, durable: true, mode: .declareOrUseExisting)
        guard let alternateExchange else { return [main] }
        main.arguments = ["alternate-exchange": .string(alternateExchange)]
        // Like the main exchange, an alternate exchange that exists with other properties is used as it is.
        return [AMQPExchangeDeclaration(name: alternateExchange, kind: .fanout, durable: true, mode: .declareOrUseExisting), main]
    }

    public var queues: [AMQPQueueDeclaration] {
        guard let alternateExchange else { return [] }
        return [
            AMQPQueueDeclaration(
                name: alternateExchange, durable: true,
                arguments: ["x-max-length": .int(Int64(unroutableMaxLength)), "x-overflow": .string("drop-head")]
                    // Only when asked: a queue declared by earlier versions has no type argument.
                    .merging(unroutableQueueType == "classic" ? [:] : ["x-queue-type": .string(unroutableQueueType)]) { $1 },
                bindings: [.init(exchange: alternateExchange, routingKey: "")],
                // A queue left by an earlier run with another --unroutable-max-length (or a policy's
                // arguments) is used as it is, with a warning: publishing must never stop over it.
                mode: .declareOrUseExisting)
        ]
    }
}
