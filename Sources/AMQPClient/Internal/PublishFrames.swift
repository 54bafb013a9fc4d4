import CRabbitMQ

/// The frames of `basic.publish` messages, encoded into one byte array so that a round of them
/// leaves in one `send(2)`.
///
/// rabbitmq-c's `amqp_basic_publish` sends every message as three writes (method, content header,
/// body), each one system call: at 64 connections, three of the six system calls the bridge made
/// per event (`strace -c`). Here rabbitmq-c's own encoders write the method's arguments and the properties, and this
/// type adds the framing `amqp_basic_publish` adds: frame header (type, channel, size) and end
/// byte; the method id; class, weight and body size; the body in frames of at most `frameSize - 8`
/// bytes. ``AMQPOutboundMessage/encodedSize(frameSize:)`` is the exact size of what this appends.
///
/// Not thread-safe: a value owned by one writer. Errors: ``append(_:frameSize:)`` throws
/// `.unencodable` when rabbitmq-c's encoders refuse the message (which
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
        // What the properties take (see `contentHeaderFrameSize`) and a little more, but never
        // beyond the frame size: the whole frame, header and end included, must fit in it.
        let room = min(max(frameSize, AMQPOutboundMessage.minimumFrameSize), message.contentHeaderFrameSize + Self.slack) - 8 - 12
        let written = withProperties(message.properties) { properties in
            var properties = properties
            return encode(room: room) { target in amqp_encode_properties(Self.basicClass, &properties, target) }
        }
        guard written >= 0 else { throw AMQPError(.unencodable, "message properties: \(errorString(written))") }
        finishFrame(at: frame)
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
