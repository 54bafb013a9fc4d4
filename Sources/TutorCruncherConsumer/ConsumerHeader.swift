/// AMQP headers the consumer library sets on messages it re-queues or dead-letters.
public enum ConsumerHeader {
    /// Which handler attempt the message is on (integer, from 1).
    public static let attempt = "tc-attempt"
    /// On dead-lettered messages: the error that sent it there (text, at most 1000 characters).
    public static let error = "tc-error"
    /// On dead-lettered messages: the queue and routing key it came from.
    public static let originalQueue = "tc-original-queue"
    public static let originalRoutingKey = "tc-original-routing-key"
}
