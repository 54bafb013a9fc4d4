/// AMQP headers the consumer library sets on messages it re-queues or dead-letters.
public enum ConsumerHeader {
    /// Which handler attempt the message is on (integer, from 1).
    public static let attempt = "tc-attempt"
    /// On dead-lettered messages: the error that sent it there (text, at most 1000 characters).
    public static let error = "tc-error"
    /// On dead-lettered messages: the queue and routing key it came from.
    public static let originalQueue = "tc-original-queue"
    public static let originalRoutingKey = "tc-original-routing-key"
    /// How many deliveries of this event ended without being settled (integer): the consumer crashed
    /// or lost its connection while holding it, or it was requeued with `nack(requeue: true)`.
    /// Written on the copy the consumer re-queues when a classic queue redelivers a message (which
    /// says only *that* it was redelivered); quorum queues count in `x-delivery-count` themselves.
    public static let unsettledDeliveries = "tc-unsettled-deliveries"
    /// The broker's count of earlier deliveries that were returned to a quorum queue.
    public static let brokerDeliveryCount = "x-delivery-count"
}
