/// Why a broker operation failed. Carries no secrets and no C types.
public struct AMQPError: Error, Sendable, Equatable, CustomStringConvertible {
    public enum Kind: Sendable, Equatable {
        /// TCP/TLS connect, login or the AMQP handshake failed.
        case connectionFailed
        /// An established connection broke (socket error, heartbeat timeout, broker closed it).
        case connectionLost
        /// The broker closed the channel (e.g. an exchange or queue that does not match a declaration).
        case channelClosed
        /// No connection to the broker right now; nothing was sent.
        case notConnected
        /// The broker raised a resource alarm and asked publishers to pause (`connection.blocked`).
        case blocked
        /// The broker negatively acknowledged the message (`basic.nack`).
        case nacked
        /// No confirm arrived within the configured deadline; the outcome is unknown.
        case confirmTimeout
        /// The client is shutting down and accepts no new work.
        case shutdown
        /// A protocol-level surprise (an unexpected frame or method).
        case protocolError
        /// The message cannot be encoded as AMQP (a short string over 255 bytes, properties larger
        /// than a frame). Nothing was sent; sending it again will fail the same way.
        case unencodable
    }

    public var kind: Kind
    /// Human-readable detail (reply texts from the broker, rabbitmq-c's error string).
    public var message: String
    /// The broker's reply code when it closed the channel or connection (e.g. 404, 406), else `nil`.
    public var replyCode: UInt16?

    public init(_ kind: Kind, _ message: String, replyCode: UInt16? = nil) {
        self.kind = kind
        self.message = message
        self.replyCode = replyCode
    }

    public var description: String { "\(kind): \(message)" }

    /// AMQP's reply code for a `mandatory` message no queue took (`basic.return`, NO_ROUTE).
    public static let noRoute: UInt16 = 312

    /// `true` for a `mandatory` message the broker returned because it reached no queue (the
    /// queue it was addressed to does not exist, or nothing is bound for its routing key).
    public var isUnroutable: Bool { kind == .nacked && replyCode == Self.noRoute }
}
