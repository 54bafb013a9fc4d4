import AMQPClient

/// The binary form of one request's messages in the spool (format version 1):
///
///     version u8 (1) | count u32 | count × message
///     message = exchange str | routing key str | mandatory u8 | content type opt-str | persistent u8 |
///               message id opt-str | type opt-str | timestamp opt-i64 | app id opt-str |
///               header count u16 | headers (key str | tag u8: 0 string, 1 int, 2 bool | value) | body bytes
///     str = length u32 LE + UTF-8; opt-x = present u8 + x; bytes = length u32 LE + bytes
///
/// Pure; thread-safe.
public enum SpooledMessages {
    public struct DecodingError: Error, CustomStringConvertible {
        public var description: String
    }

    public static func encode(_ messages: [AMQPOutboundMessage]) -> [UInt8] {
        var out: [UInt8] = [1]
        putU32(UInt32(messages.count), &out)
        for message in messages {
            putString(message.exchange, &out)
            putString(message.routingKey, &out)
            out.append(message.mandatory ? 1 : 0)
            let p = message.properties
            putOptionalString(p.contentType, &out)
            out.append(p.persistent ? 1 : 0)
            putOptionalString(p.messageID, &out)
            putOptionalString(p.type, &out)
            if let timestamp = p.timestamp {
                out.append(1)
                putU64(UInt64(bitPattern: timestamp), &out)
            } else {
                out.append(0)
            }
            putOptionalString(p.appID, &out)
            putU16(UInt16(p.headers.count), &out)
            for (key, value) in p.headers {
                putString(key, &out)
                switch value {
                case .string(let text):
                    out.append(0)
                    putString(text, &out)
                case .int(let number):
                    out.append(1)
                    putU64(UInt64(bitPattern: number), &out)
                case .bool(let flag):
                    out.append(2)
                    out.append(flag ? 1 : 0)
                }
            }
            putU32(UInt32(message.body.count), &out)
            out.append(contentsOf: message.body)
        }
        return out
    }

    public static func decode(_ bytes: [UInt8]) throws(DecodingError) -> [AMQPOutboundMessage] {
        var reader = Reader(bytes: bytes)
        guard try reader.u8() == 1 else { throw DecodingError(description: "unknown spool record version") }
        let count = try reader.u32()
        var messages: [AMQPOutboundMessage] = []
        for _ in 0..<count {
            let exchange = try reader.string()
            let routingKey = try reader.string()
            let mandatory = try reader.u8() == 1
            let contentType = try reader.optionalString()
            let persistent = try reader.u8() == 1
            let messageID = try reader.optionalString()
            let type = try reader.optionalString()
            let timestamp: Int64? = try reader.u8() == 1 ? Int64(bitPattern: try reader.u64()) : nil
            let appID = try reader.optionalString()
            var headers: [(String, AMQPHeaderValue)] = []
            for _ in 0..<(try reader.u16()) {
                let key = try reader.string()
                switch try reader.u8() {
                case 0: headers.append((key, .string(try reader.string())))
                case 1: headers.append((key, .int(Int64(bitPattern: try reader.u64()))))
                case 2: headers.append((key, .bool(try reader.u8() == 1)))
                default: throw DecodingError(description: "unknown header type")
                }
            }
            let body = try reader.bytes(Int(try reader.u32()))
            messages.append(
                AMQPOutboundMessage(
                    exchange: exchange, routingKey: routingKey,
                    properties: AMQPProperties(
                        contentType: contentType, persistent: persistent, messageID: messageID, type: type, timestamp: timestamp,
                        appID: appID, headers: headers),
                    body: body, mandatory: mandatory))
        }
        guard reader.isAtEnd else { throw DecodingError(description: "trailing bytes") }
        return messages
    }

    private static func putU16(_ value: UInt16, _ out: inout [UInt8]) {
        out.append(UInt8(truncatingIfNeeded: value))
        out.append(UInt8(truncatingIfNeeded: value >> 8))
    }

    private static func putU32(_ value: UInt32, _ out: inout [UInt8]) {
        for shift in stride(from: 0, to: 32, by: 8) { out.append(UInt8(truncatingIfNeeded: value >> UInt32(shift))) }
    }

    private static func putU64(_ value: UInt64, _ out: inout [UInt8]) {
        for shift in stride(from: 0, to: 64, by: 8) { out.append(UInt8(truncatingIfNeeded: value >> UInt64(shift))) }
    }

    private static func putString(_ text: String, _ out: inout [UInt8]) {
        let utf8 = Array(text.utf8)
        putU32(UInt32(utf8.count), &out)
        out.append(contentsOf: utf8)
    }

    private static func putOptionalString(_ text: String?, _ out: inout [UInt8]) {
        if let text {
            out.append(1)
            putString(text, &out)
        } else {
            out.append(0)
        }
    }

    private struct Reader {
        let bytes: [UInt8]
        var index = 0
        var isAtEnd: Bool { index == bytes.count }

        mutating func bytes(_ count: Int) throws(DecodingError) -> [UInt8] {
            guard count >= 0, index + count <= bytes.count else { throw DecodingError(description: "truncated record") }
            defer { index += count }
            return Array(bytes[index..<index + count])
        }

        mutating func u8() throws(DecodingError) -> UInt8 { try bytes(1)[0] }
        mutating func u16() throws(DecodingError) -> UInt16 {
            let b = try bytes(2)
            return UInt16(b[0]) | UInt16(b[1]) << 8
        }
        mutating func u32() throws(DecodingError) -> UInt32 {
            try bytes(4).enumerated().reduce(0) { $0 | UInt32($1.element) << UInt32(8 * $1.offset) }
        }
        mutating func u64() throws(DecodingError) -> UInt64 {
            try bytes(8).enumerated().reduce(0) { $0 | UInt64($1.element) << UInt64(8 * $1.offset) }
        }
        mutating func string() throws(DecodingError) -> String { String(decoding: try bytes(Int(try u32())), as: UTF8.self) }
        mutating func optionalString() throws(DecodingError) -> String? { try u8() == 1 ? try string() : nil }
    }
}
