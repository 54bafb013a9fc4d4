import CRabbitMQ

/// The frames of `basic.publish` messages, encoded into one byte array so that a round of them
/// leaves in one `send(2)`.
///
/// rabbitmq-c's `amqp_basic_publish` sends every message as three writes (method, content header,
/// body), each one system call: at 64 connections, three of the six system calls the bridge made
/// per event (`strace -c`). Here rabbitmq-c's own encoder writes the method's arguments; the
/// properties are written here, byte for byte as `amqp_encode_properties` writes them (the tests
/// compare the two), straight into the array: through rabbitmq-c they took a C copy of every
/// string, about twenty allocations per message on the owner thread. This type adds the framing
/// `amqp_basic_publish` adds: frame header (type, channel, size) and end byte; the method id; class,
/// weight and body size; the body in frames of at most `frameSize - 8` bytes.
/// ``AMQPOutboundMessage/encodedSize(frameSize:)`` is the exact size of what this appends.
///
/// Not thread-safe: a value owned by one writer. Errors: ``append(_:channel:frameSize:)`` throws
/// `.unencodable` when the message cannot be encoded (which
/// ``AMQPOutboundMessage/encodingProblem(frameSize:)`` rules out first), and then appends nothing.
struct PublishFrames: ~Copyable {
    private(set) var bytes: [UInt8] = []
    /// Messages appended since the last ``removeAll()``.
    private(set) var count = 0

    private static let frameMethod: UInt8 = 1
    private static let frameHeader: UInt8 = 2
    private static let frameBody: UInt8 = 3
    private static let frameEnd: UInt8 = 206
    private static let basicClass: UInt16 = 60
    private static let basicPublish: UInt32 = 0x003C_0028
    /// The method's arguments at most: reserved short, two short strings with their lengths, flags.
    private static let methodArgumentsLimit = 2 + 256 + 256 + 1
    /// Room given to an encoder beyond the size computed for its output (zeroed, then given back).
    private static let slack = 16

    var isEmpty: Bool { bytes.isEmpty }

    /// Forgets the frames, keeping the array's storage up to `keepingCapacityUpTo` bytes (the
    /// storage of one unusually large round is given back).
    mutating func removeAll(keepingCapacityUpTo limit: Int = 1 << 20) {
        if bytes.capacity > limit { bytes = [] } else { bytes.removeAll(keepingCapacity: true) }
        count = 0
    }

    /// Appends `message` as it goes on the wire on `channel`: a method frame, a content header
    /// frame and as many body frames as its body needs at `frameSize`.
    mutating func append(_ message: AMQPOutboundMessage, channel: UInt16, frameSize: Int) throws(AMQPError) {
        let start = bytes.count
        do {
            try appendMethod(message, channel: channel)
            try appendHeader(message, channel: channel, frameSize: frameSize)
        } catch {
            bytes.removeSubrange(start...)
            throw error
        }
        let perFrame = max(frameSize, AMQPOutboundMessage.minimumFrameSize) - 8
        message.body.withUnsafeBytes { body in
            var offset = 0
            while offset < body.count {
                let length = min(perFrame, body.count - offset)
                appendFrameHeader(Self.frameBody, channel: channel, size: length)
                bytes.append(contentsOf: UnsafeRawBufferPointer(rebasing: body[offset..<offset + length]))
                bytes.append(Self.frameEnd)
                offset += length
            }
        }
        count += 1
    }

    private mutating func appendMethod(_ message: AMQPOutboundMessage, channel: UInt16) throws(AMQPError) {
        let frame = bytes.count
        appendFrameHeader(Self.frameMethod, channel: channel, size: 0)
        appendBigEndian(Self.basicPublish)
        let written = withBytes(message.exchange) { exchange in
            withBytes(message.routingKey) { routingKey in
                var publish = amqp_basic_publish_t(
                    ticket: 0, exchange: exchange, routing_key: routingKey, mandatory: message.mandatory ? 1 : 0, immediate: 0)
                // What the arguments take (see `encodedSize`), and a little more: the encoder says when it needs more.
                let room = min(Self.methodArgumentsLimit, 2 + 1 + exchange.len + 1 + routingKey.len + 1 + Self.slack)
                return encode(room: room) { target in amqp_encode_method(Self.basicPublish, &publish, target) }
            }
        }
        guard written >= 0 else { throw AMQPError(.unencodable, "basic.publish: \(errorString(written))") }
        finishFrame(at: frame)
    }

    private mutating func appendHeader(_ message: AMQPOutboundMessage, channel: UInt16, frameSize: Int) throws(AMQPError) {
        let frame = bytes.count
        appendFrameHeader(Self.frameHeader, channel: channel, size: 0)
        appendBigEndian(Self.basicClass)
        appendBigEndian(UInt16(0))  // weight
        appendBigEndian(UInt64(message.body.count))
        // The whole frame, header and end included, must fit in the frame size; its exact size is
        // known before a byte of the properties is written.
        let size = message.contentHeaderFrameSize
        let limit = max(frameSize, AMQPOutboundMessage.minimumFrameSize)
        guard size <= limit else {
            throw AMQPError(.unencodable, "message properties take \(size) bytes; the frame size is \(limit)")
        }
        try appendProperties(message.properties)
        finishFrame(at: frame)
    }

    /// The property flags and the properties that are set, in the order of their flags, as
    /// `amqp_encode_properties` writes them. The caller has checked that they fit in a frame, so
    /// every length here is below the frame size (a `UInt32`).
    private mutating func appendProperties(_ properties: AMQPProperties) throws(AMQPError) {
        var flags = TCB_FLAG_DELIVERY_MODE
        if properties.contentType != nil { flags |= TCB_FLAG_CONTENT_TYPE }
        if !properties.headers.isEmpty { flags |= TCB_FLAG_HEADERS }
        if properties.expiration != nil { flags |= TCB_FLAG_EXPIRATION }
        if properties.messageID != nil { flags |= TCB_FLAG_MESSAGE_ID }
        if properties.timestamp != nil { flags |= TCB_FLAG_TIMESTAMP }
        if properties.type != nil { flags |= TCB_FLAG_TYPE }
        if properties.appID != nil { flags |= TCB_FLAG_APP_ID }
        appendBigEndian(UInt16(truncatingIfNeeded: flags))  // every flag used is in the first 16 bits
        if let contentType = properties.contentType { try appendShortString(contentType, "content type") }
        if !properties.headers.isEmpty { try appendTable(properties.headers) }
        bytes.append(properties.persistent ? 2 : 1)
        if let expiration = properties.expiration { try appendShortString(expiration, "expiration") }
        if let messageID = properties.messageID { try appendShortString(messageID, "message id") }
        if let timestamp = properties.timestamp { appendBigEndian(UInt64(clamping: timestamp)) }
        if let type = properties.type { try appendShortString(type, "type") }
        if let appID = properties.appID { try appendShortString(appID, "app id") }
    }

    /// A field table: its size in bytes, then each entry's name (a short string), kind and value.
    private mutating func appendTable(_ entries: [(String, AMQPHeaderValue)]) throws(AMQPError) {
        let sizeAt = bytes.count
        appendBigEndian(UInt32(0))
        for (key, value) in entries {
            try appendShortString(key, "header name")
            switch value {
            case .string(let text):
                bytes.append(tcb_kind_utf8())
                try appendLongString(text)
            case .int(let number):
                bytes.append(tcb_kind_i64())
                appendBigEndian(number)
            case .bool(let flag):
                bytes.append(tcb_kind_boolean())
                bytes.append(flag ? 1 : 0)
            }
        }
        try setBigEndianLength(bytes.count - sizeAt - 4, at: sizeAt)
    }

    private mutating func appendShortString(_ text: String, _ what: String) throws(AMQPError) {
        guard let length = UInt8(exactly: text.utf8.count) else {
            throw AMQPError(.unencodable, "\(what) is \(text.utf8.count) bytes; AMQP allows 255")
        }
        bytes.append(length)
        bytes.append(contentsOf: text.utf8)
    }

    private mutating func appendLongString(_ text: String) throws(AMQPError) {
        let sizeAt = bytes.count
        appendBigEndian(UInt32(0))
        bytes.append(contentsOf: text.utf8)
        try setBigEndianLength(bytes.count - sizeAt - 4, at: sizeAt)
    }

    /// Writes `length` as the 32-bit big-endian size field at `offset`.
    private mutating func setBigEndianLength(_ length: Int, at offset: Int) throws(AMQPError) {
        guard let length = UInt32(exactly: length) else { throw AMQPError(.unencodable, "a header is \(length) bytes") }
        for index in 0..<4 { bytes[offset + index] = UInt8(truncatingIfNeeded: length >> (24 - 8 * UInt32(index))) }
    }

    /// Lets `encoder` write at most `room` bytes at the end of `bytes` (which costs zeroing them
    /// first: keep `room` close to what it needs); keeps what it wrote.
    /// Returns its result: the bytes written, or a negative rabbitmq-c status (nothing kept).
    private mutating func encode(room: Int, _ encoder: (amqp_bytes_t) -> Int32) -> Int32 {
        let start = bytes.count
        bytes.append(contentsOf: repeatElement(0, count: room))
        let written = bytes.withUnsafeMutableBytes { raw in
            encoder(amqp_bytes_t(len: room, bytes: raw.baseAddress.map { $0 + start }))
        }
        bytes.removeLast(room - Int(clamping: max(0, min(written, Int32(clamping: room)))))
        return written
    }

    private mutating func appendFrameHeader(_ type: UInt8, channel: UInt16, size: Int) {
        bytes.append(type)
        appendBigEndian(channel)
        appendBigEndian(UInt32(truncatingIfNeeded: size))
    }

    /// Sets the size of the frame that starts at `frame` (everything after its 7-byte header) and ends it.
    private mutating func finishFrame(at frame: Int) {
        let size = UInt32(truncatingIfNeeded: bytes.count - frame - 7)
        for index in 0..<4 { bytes[frame + 3 + index] = UInt8(truncatingIfNeeded: size >> (24 - 8 * UInt32(index))) }
        bytes.append(Self.frameEnd)
    }

    private mutating func appendBigEndian<T: FixedWidthInteger>(_ value: T) {
        withUnsafeBytes(of: value.bigEndian) { bytes.append(contentsOf: $0) }
    }
}
