/// A value in an AMQP header table. Only the kinds TCBridge needs; each maps to one AMQP field type.
public enum AMQPHeaderValue: Sendable, Hashable {
    case string(String)
    case int(Int64)
    case bool(Bool)
}

/// The `basic` properties of a message. `nil` fields are not sent.
public struct AMQPProperties: Sendable, Hashable {
    public var contentType: String?
    /// `true` sends delivery-mode 2 (persistent).
    public var persistent: Bool
    public var messageID: String?
    public var type: String?
    /// Seconds since the Unix epoch.
    public var timestamp: Int64?
    public var appID: String?
    /// Per-message TTL in milliseconds, as AMQP's decimal text (e.g. `"5000"`): the broker drops or
    /// dead-letters the message once it has waited this long at the head of a queue.
    public var expiration: String?
    /// Header table, sent in key order.
    public var headers: [(String, AMQPHeaderValue)]

    public init(
        contentType: String? = nil,
        persistent: Bool = true,
        messageID: String? = nil,
        type: String? = nil,
        timestamp: Int64? = nil,
        appID: String? = nil,
        expiration: String? = nil,
        headers: [(String, AMQPHeaderValue)] = []
    ) {
        self.contentType = contentType
        self.persistent = persistent
        self.messageID = messageID
        self.type = type
        self.timestamp = timestamp
        self.appID = appID
        self.expiration = expiration
        self.headers = headers
    }

    public static func == (lhs: AMQPProperties, rhs: AMQPProperties) -> Bool {
        lhs.contentType == rhs.contentType && lhs.persistent == rhs.persistent && lhs.messageID == rhs.messageID
            && lhs.type == rhs.type && lhs.timestamp == rhs.timestamp && lhs.appID == rhs.appID && lhs.expiration == rhs.expiration
            && lhs.headers.map(\.0) == rhs.headers.map(\.0) && lhs.headers.map(\.1) == rhs.headers.map(\.1)
    }

    public func hash(into hasher: inout Hasher) {
        hasher.combine(messageID)
        hasher.combine(type)
    }

    /// The value of header `name`, if present.
    public func header(_ name: String) -> AMQPHeaderValue? {
        headers.first { $0.0 == name }?.1
    }
}

/// A message to publish: exchange, routing key, properties and body bytes.
public struct AMQPOutboundMessage: Sendable {
    public var exchange: String
    public var routingKey: String
    public var properties: AMQPProperties
    public var body: [UInt8]
    /// Ask the broker to return the message when no queue is bound for it (`mandatory`).
    public var mandatory: Bool

    public init(exchange: String, routingKey: String, properties: AMQPProperties, body: [UInt8], mandatory: Bool = false) {
        self.exchange = exchange
        self.routingKey = routingKey
        self.properties = properties
        self.body = body
        self.mandatory = mandatory
    }
}

/// A message received from the broker.
public struct AMQPInboundMessage: Sendable {
    public var exchange: String
    public var routingKey: String
    public var properties: AMQPProperties
    public var body: [UInt8]
    /// The broker delivered this message before (to this or another consumer).
    public var redelivered: Bool

    public init(exchange: String, routingKey: String, properties: AMQPProperties, body: [UInt8], redelivered: Bool) {
        self.exchange = exchange
        self.routingKey = routingKey
        self.properties = properties
        self.body = body
        self.redelivered = redelivered
    }
}

/// An exchange the client declares on every (re)connect.
public struct AMQPExchangeDeclaration: Sendable, Hashable {
    public enum Kind: String, Sendable { case direct, fanout, topic, headers }

    /// How the client asserts the exchange on connect.
    public enum Mode: Sendable, Hashable {
        /// `exchange.declare` with these properties; the broker refuses a mismatch with an existing one.
        case declare
        /// Use the exchange as it exists (whatever its arguments); create it with these properties
        /// only when it is missing. For clients that do not own the exchange, such as consumers.
        case declareIfMissing
        /// `exchange.declare`; if an exchange of that name exists with other properties, log it and use
        /// it as it is rather than fail (an older deployment's exchange, say).
        case declareOrUseExisting
    }

    public var name: String
    public var kind: Kind
    public var durable: Bool
    public var arguments: [String: AMQPHeaderValue]
    public var mode: Mode

    public init(
        name: String, kind: Kind = .topic, durable: Bool = true, arguments: [String: AMQPHeaderValue] = [:], mode: Mode = .declare
    ) {
        self.name = name
        self.kind = kind
        self.durable = durable
        self.arguments = arguments
        self.mode = mode
    }
}

/// A queue the client declares on every (re)connect, with its bindings.
public struct AMQPQueueDeclaration: Sendable, Hashable {
    public struct Binding: Sendable, Hashable {
        public var exchange: String
        public var routingKey: String
        public init(exchange: String, routingKey: String) {
            self.exchange = exchange
            self.routingKey = routingKey
        }
    }

    /// How the client asserts the queue on connect.
    public enum Mode: Sendable, Hashable {
        /// `queue.declare` with these properties; the broker refuses a mismatch with an existing
        /// queue (PRECONDITION_FAILED), and the connection attempt fails.
        case declare
        /// `queue.declare`; if a queue of that name exists with other properties (another
        /// `x-max-length`, say), use it as it is (the caller is told, to log it) rather than fail.
        /// The bindings are still declared.
        case declareOrUseExisting
    }

    public var name: String
    public var durable: Bool
    public var exclusive: Bool
    public var autoDelete: Bool
    /// `x-` arguments such as `x-queue-type`, `x-dead-letter-exchange`, `x-max-length`.
    public var arguments: [String: AMQPHeaderValue]
    public var bindings: [Binding]
    public var mode: Mode

    public init(
        name: String,
        durable: Bool = true,
        exclusive: Bool = false,
        autoDelete: Bool = false,
        arguments: [String: AMQPHeaderValue] = [:],
        bindings: [Binding] = [],
        mode: Mode = .declare
    ) {
        self.name = name
        self.durable = durable
        self.exclusive = exclusive
        self.autoDelete = autoDelete
        self.arguments = arguments
        self.bindings = bindings
        self.mode = mode
    }
}

extension AMQPOutboundMessage {
    /// The smallest frame size AMQP 0-9-1 lets a broker negotiate. Properties that fit in it fit
    /// in any frame, whatever the broker's `frame_max`.
    public static let minimumFrameSize = 4096

    /// RabbitMQ's default `max_message_size` (128 MiB); larger bodies are refused by the broker.
    public static let maximumBodySize = 128 << 20

    /// The content header frame's size in bytes: frame header and end (8), class, weight, body
    /// size, flags (14), then the properties that are set.
    var contentHeaderFrameSize: Int {
        var size = 8 + 14
        for text in [properties.contentType, properties.messageID, properties.type, properties.appID, properties.expiration] {
            if let text { size += 1 + text.utf8.count }
        }
        size += 1  // delivery mode
        if properties.timestamp != nil { size += 8 }
        if !properties.headers.isEmpty {
            size += 4
            for (key, value) in properties.headers {
                size += 1 + key.utf8.count + 1
                switch value {
                case .string(let text): size += 4 + text.utf8.count
                case .int: size += 8
                case .bool: size += 1
                }
            }
        }
        return size
    }

    /// Bytes this message takes on the wire in frames of `frameSize` (at least 4096): the
    /// `basic.publish` method frame, the content header frame and the body frames.
    func encodedSize(frameSize: Int) -> Int {
        // Method frame: frame header and end (8), class and method (4), reserved (2), the two short
        // strings with their lengths, flags (1).
        let method = 8 + 4 + 2 + 1 + exchange.utf8.count + 1 + routingKey.utf8.count + 1
        let perFrame = max(frameSize, Self.minimumFrameSize) - 8
        let bodyFrames = (body.count + perFrame - 1) / perFrame
        return method + contentHeaderFrameSize + body.count + 8 * bodyFrames
    }

    /// Why this message cannot travel as one `basic.publish` with content header and body frames
    /// in a connection whose frame size is `frameSize`, or `nil` when it can.
    ///
    /// rabbitmq-c writes the method frame before it encodes the properties, so an encoding failure
    /// half-way would leave the connection unusable: the publisher checks first and refuses the
    /// message instead. Pure; thread-safe.
    public func encodingProblem(frameSize: Int = AMQPOutboundMessage.minimumFrameSize) -> String? {
        func shortString(_ value: String?, _ name: String) -> String? {
            guard let count = value?.utf8.count, count > 255 else { return nil }
            return "\(name) is \(count) bytes; AMQP allows 255"
        }
        if let problem = shortString(exchange, "exchange name") ?? shortString(routingKey, "routing key")
            ?? shortString(properties.contentType, "content type") ?? shortString(properties.messageID, "message id")
            ?? shortString(properties.type, "type") ?? shortString(properties.appID, "app id")
            ?? shortString(properties.expiration, "expiration")
        {
            return problem
        }
        if let problem = properties.headers.lazy.compactMap({ shortString($0.0, "header name") }).first { return problem }
        let size = contentHeaderFrameSize
        if size > frameSize {
            return "message properties take \(size) bytes; the frame size is \(frameSize)"
        }
        if body.count > Self.maximumBodySize {
            return "body is \(body.count) bytes; RabbitMQ accepts at most \(Self.maximumBodySize)"
        }
        return nil
    }
}
