/// Why a byte sequence is not acceptable JSON. `offset` is the byte position of the problem.
public struct JSONParseError: Error, Sendable, Equatable, CustomStringConvertible {
    public var reason: String
    public var offset: Int
    public var description: String { "\(reason) at byte \(offset)" }
}

/// A strict RFC 8259 parser producing ``JSONValue``.
///
/// Strict: rejects trailing commas, comments, leading zeros, unescaped control characters and
/// invalid UTF-8. A lone surrogate escape (`"\ud800"`, which Python's `json` writes for such
/// strings) is read as U+FFFD in the value; ``parseWebhookBody(_:)`` keeps each event's exact
/// bytes, so nothing of it is lost. Bounded: nesting deeper than `maximumDepth` is an error rather
/// than a stack overflow. Pure and thread-safe; no Foundation.
public struct JSONParser: Sendable {
    public var maximumDepth: Int

    public init(maximumDepth: Int = 256) {
        self.maximumDepth = maximumDepth
    }

    public func parse(_ bytes: some Collection<UInt8>) throws(JSONParseError) -> JSONValue {
        let array = Array(bytes)
        var reader = JSONReader(bytes: array, maximumDepth: maximumDepth)
        reader.skipWhitespace()
        let value = try reader.parseValue(depth: 0)
        reader.skipWhitespace()
        if reader.index != array.count { throw reader.error("unexpected data after the JSON value") }
        return value
    }

    /// Parses a webhook body and, when its root is an object with an `"events"` array, also
    /// returns where each element of that array (the last such key, as lookups use) and each of
    /// its members lie in `bytes`.
    public func parseWebhookBody(_ bytes: [UInt8]) throws(JSONParseError) -> (root: JSONValue, events: [EventSource]?) {
        var reader = JSONReader(bytes: bytes, maximumDepth: maximumDepth)
        reader.recordsEvents = true
        reader.skipWhitespace()
        let value = try reader.parseValue(depth: 0)
        reader.skipWhitespace()
        if reader.index != bytes.count { throw reader.error("unexpected data after the JSON value") }
        return (value, reader.events)
    }
}

/// Where one event object and its members lie in the body it was parsed from.
public struct EventSource: Sendable, Equatable {
    /// One member: its decoded name and the bytes `"name": value` span.
    public struct Member: Sendable, Equatable {
        public var key: String
        public var range: Range<Int>
    }

    /// The whole body (shared storage, not a copy).
    public var body: [UInt8]
    /// The bytes of the event, `{` to `}`; `nil` when the element is not an object.
    public var range: Range<Int>
    public var members: [Member]?
}

/// The parser's cursor over one byte array; ``JSONParser`` and the webhook scan (WebhookScan.swift) drive it.
struct JSONReader {
    let bytes: [UInt8]
    let maximumDepth: Int
    var index = 0
    /// Record ``EventSource``s for the root object's `"events"` array.
    var recordsEvents = false
    var events: [EventSource]?

    init(bytes: [UInt8], maximumDepth: Int) {
        self.bytes = bytes
        self.maximumDepth = maximumDepth
    }

    func error(_ reason: String) -> JSONParseError { JSONParseError(reason: reason, offset: index) }

    mutating func skipWhitespace() {
        while index < bytes.count {
            switch bytes[index] {
            case 0x20, 0x09, 0x0D: index += 1
            case 0x0A:
                // An indented body's line break is followed by a run of spaces.
                index = ByteWords.spacesEnd(in: bytes, from: index + 1)
            default: return
            }
        }
    }

    mutating func expect(_ literal: StaticString, value: JSONValue) throws(JSONParseError) -> JSONValue {
        let count = literal.utf8CodeUnitCount
        guard index + count <= bytes.count else { throw error("truncated literal") }
        let matches = literal.withUTF8Buffer { buffer in
            bytes[index..<index + count].elementsEqual(buffer)
        }
        guard matches else { throw error("invalid literal") }
        index += count
        return value
    }

    mutating func parseValue(depth: Int) throws(JSONParseError) -> JSONValue {
        guard index < bytes.count else { throw error("unexpected end of input") }
        switch bytes[index] {
        case UInt8(ascii: "{"):
            var members: [EventSource.Member]?
            return try parseObject(depth: depth + 1, members: &members)
        case UInt8(ascii: "["): return try parseArray(depth: depth + 1)
        case UInt8(ascii: "\""): return .string(try parseString())
        case UInt8(ascii: "t"): return try expect("true", value: .bool(true))
        case UInt8(ascii: "f"): return try expect("false", value: .bool(false))
        case UInt8(ascii: "n"): return try expect("null", value: .null)
        case UInt8(ascii: "-"), UInt8(ascii: "0")...UInt8(ascii: "9"): return .number(try parseNumber())
        default: throw error("unexpected character")
        }
    }

    /// Parses an object; when `spans` is non-nil, appends each member's name and byte range to it.
    mutating func parseObject(depth: Int, members spans: inout [EventSource.Member]?) throws(JSONParseError) -> JSONValue {
        guard depth <= maximumDepth else { throw error("nesting deeper than \(maximumDepth)") }
        index += 1
        var members: [JSONObject.Member] = []
        skipWhitespace()
        if index < bytes.count, bytes[index] == UInt8(ascii: "}") {
            index += 1
            return .object(JSONObject(members))
        }
        while true {
            skipWhitespace()
            guard index < bytes.count, bytes[index] == UInt8(ascii: "\"") else { throw error("expected a member name") }
            let memberStart = index
            let key = try parseString()
            skipWhitespace()
            guard index < bytes.count, bytes[index] == UInt8(ascii: ":") else { throw error("expected ':'") }
            index += 1
            skipWhitespace()
            let value: JSONValue
            if recordsEvents, depth == 1, key == "events", index < bytes.count, bytes[index] == UInt8(ascii: "[") {
                value = try parseArray(depth: depth + 1, recordingEvents: true)
            } else {
                value = try parseValue(depth: depth)
            }
            spans?.append(EventSource.Member(key: key, range: memberStart..<index))
            members.append(JSONObject.Member(key: key, value: value))
            if try separator(closing: UInt8(ascii: "}")) { continue }
            return .object(JSONObject(members))
        }
    }

    mutating func parseArray(depth: Int, recordingEvents: Bool = false) throws(JSONParseError) -> JSONValue {
        guard depth <= maximumDepth else { throw error("nesting deeper than \(maximumDepth)") }
        index += 1
        var elements: [JSONValue] = []
        var sources: [EventSource] = []
        skipWhitespace()
        if index < bytes.count, bytes[index] == UInt8(ascii: "]") {
            index += 1
            if recordingEvents { events = sources }
            return .array(elements)
        }
        while true {
            skipWhitespace()
            if recordingEvents {
                let start = index
                var members: [EventSource.Member]? = index < bytes.count && bytes[index] == UInt8(ascii: "{") ? [] : nil
                if members != nil {
                    elements.append(try parseObject(depth: depth + 1, members: &members))
                } else {
                    elements.append(try parseValue(depth: depth))
                }
                sources.append(EventSource(body: bytes, range: start..<index, members: members))
            } else {
                elements.append(try parseValue(depth: depth))
            }
            if try separator(closing: UInt8(ascii: "]")) { continue }
            if recordingEvents { events = sources }
            return .array(elements)
        }
    }

    mutating func parseNumber() throws(JSONParseError) -> String {
        String(decoding: bytes[try scanNumber()], as: UTF8.self)
    }

    /// Reads a number's bytes (the same rules and errors as ``parseNumber()``) without making a string.
    mutating func scanNumber() throws(JSONParseError) -> Range<Int> {
        let start = index
        if bytes[index] == UInt8(ascii: "-") { index += 1 }
        guard index < bytes.count, isDigit(bytes[index]) else { throw error("invalid number") }
        if bytes[index] == UInt8(ascii: "0") {
            index += 1
            if index < bytes.count, isDigit(bytes[index]) { throw error("leading zero in number") }
        } else {
            while index < bytes.count, isDigit(bytes[index]) { index += 1 }
        }
        if index < bytes.count, bytes[index] == UInt8(ascii: ".") {
            index += 1
            guard index < bytes.count, isDigit(bytes[index]) else { throw error("invalid fraction") }
            while index < bytes.count, isDigit(bytes[index]) { index += 1 }
        }
        if index < bytes.count, bytes[index] == UInt8(ascii: "e") || bytes[index] == UInt8(ascii: "E") {
            index += 1
            if index < bytes.count, bytes[index] == UInt8(ascii: "+") || bytes[index] == UInt8(ascii: "-") { index += 1 }
            guard index < bytes.count, isDigit(bytes[index]) else { throw error("invalid exponent") }
            while index < bytes.count, isDigit(bytes[index]) { index += 1 }
        }
        return start..<index
    }

    mutating func parseString() throws(JSONParseError) -> String {
        index += 1  // opening quote
        let start = index
        // Fast path: no escapes. ASCII needs no UTF-8 validation (the generic validator costs a
        // metadata lookup per string).
        index = ByteWords.plainASCIIEnd(in: bytes, from: index)
        var ascii = true
        while index < bytes.count {
            let byte = bytes[index]
            if byte == UInt8(ascii: "\"") {
                let slice = bytes[start..<index]
                index += 1
                if ascii { return String(decoding: slice, as: UTF8.self) }
                guard let text = String(validating: slice, as: UTF8.self) else {
                    throw JSONParseError(reason: "invalid UTF-8 in string", offset: start)
                }
                return text
            }
            if byte == UInt8(ascii: "\\") { break }
            if byte < 0x20 { throw error("unescaped control character in string") }
            if byte >= 0x80 { ascii = false }
            index += 1
        }
        var scalars: [UInt8] = Array(bytes[start..<index])
        while index < bytes.count {
            let byte = bytes[index]
            switch byte {
            case UInt8(ascii: "\""):
                index += 1
                guard let text = String(validating: scalars, as: UTF8.self) else {
                    throw JSONParseError(reason: "invalid UTF-8 in string", offset: start)
                }
                return text
            case UInt8(ascii: "\\"):
                index += 1
                guard index < bytes.count else { throw error("unterminated escape") }
                let escape = bytes[index]
                index += 1
                switch escape {
                case UInt8(ascii: "\""): scalars.append(0x22)
                case UInt8(ascii: "\\"): scalars.append(0x5C)
                case UInt8(ascii: "/"): scalars.append(0x2F)
                case UInt8(ascii: "b"): scalars.append(0x08)
                case UInt8(ascii: "f"): scalars.append(0x0C)
                case UInt8(ascii: "n"): scalars.append(0x0A)
                case UInt8(ascii: "r"): scalars.append(0x0D)
                case UInt8(ascii: "t"): scalars.append(0x09)
                case UInt8(ascii: "u"):
                    var code = try parseHex4()
                    if (0xD800...0xDBFF).contains(code) {
                        // A high surrogate combines with an escaped low one that follows; alone it is
                        // a lone surrogate (the following escape, if any, is read on its own).
                        if index + 1 < bytes.count, bytes[index] == UInt8(ascii: "\\"), bytes[index + 1] == UInt8(ascii: "u") {
                            let saved = index
                            index += 2
                            let low = try parseHex4()
                            if (0xDC00...0xDFFF).contains(low) {
                                code = 0x10000 + ((code - 0xD800) << 10) + (low - 0xDC00)
                            } else {
                                index = saved
                                code = 0xFFFD
                            }
                        } else {
                            code = 0xFFFD
                        }
                    } else if (0xDC00...0xDFFF).contains(code) {
                        code = 0xFFFD  // lone low surrogate
                    }
                    // Every value left is a valid scalar: surrogates were combined or replaced above.
                    let scalar = Unicode.Scalar(code) ?? "\u{FFFD}"
                    scalars.append(contentsOf: String(Character(scalar)).utf8)
                default:
                    throw error("invalid escape")
                }
            default:
                if byte < 0x20 { throw error("unescaped control character in string") }
                scalars.append(byte)
                index += 1
            }
        }
        throw error("unterminated string")
    }

    mutating func parseHex4() throws(JSONParseError) -> UInt32 {
        guard index + 4 <= bytes.count else { throw error("truncated \\u escape") }
        var value: UInt32 = 0
        for _ in 0..<4 {
            let byte = bytes[index]
            let digit: UInt32
            switch byte {
            case UInt8(ascii: "0")...UInt8(ascii: "9"): digit = UInt32(byte - UInt8(ascii: "0"))
            case UInt8(ascii: "a")...UInt8(ascii: "f"): digit = UInt32(byte - UInt8(ascii: "a") + 10)
            case UInt8(ascii: "A")...UInt8(ascii: "F"): digit = UInt32(byte - UInt8(ascii: "A") + 10)
            default: throw error("invalid \\u escape")
            }
            value = value << 4 | digit
            index += 1
        }
        return value
    }

    /// After a member or an element: skips whitespace, then consumes `,` (`true`: another follows)
    /// or `close`, `}` or `]` (`false`: the container ended). Anything else is the container's error.
    mutating func separator(closing close: UInt8) throws(JSONParseError) -> Bool {
        skipWhitespace()
        let inObject = close == UInt8(ascii: "}")
        guard index < bytes.count else { throw error(inObject ? "unterminated object" : "unterminated array") }
        if bytes[index] == UInt8(ascii: ",") {
            index += 1
            return true
        }
        if bytes[index] == close {
            index += 1
            return false
        }
        throw error(inObject ? "expected ',' or '}'" : "expected ',' or ']'")
    }

    func isDigit(_ byte: UInt8) -> Bool { byte >= UInt8(ascii: "0") && byte <= UInt8(ascii: "9") }
}

/// Word-at-a-time (SWAR) skips for the reader's byte loops: eight bytes are tested with a few
/// integer operations, and a word is passed over only when the byte loop would have passed over
/// each of its bytes without changing anything. The first word that may matter, and the last
/// bytes (fewer than eight), are left to the byte loop, which decides.
enum ByteWords {
    private static let ones: UInt64 = 0x0101_0101_0101_0101
    private static let highBits: UInt64 = 0x8080_8080_8080_8080

    /// The first index at or after `start` where a word of eight bytes begins that holds a `"`, a
    /// `\`, a control character (below 0x20) or a byte of 0x80 or above; or where fewer than eight
    /// bytes are left. A string's bytes before it are plain ASCII with nothing to decode or reject.
    static func plainASCIIEnd(in bytes: [UInt8], from start: Int) -> Int {
        bytes.withUnsafeBytes { raw in
            var offset = start
            while offset >= 0, raw.count - offset >= 8 {
                let word = raw.loadUnaligned(fromByteOffset: offset, as: UInt64.self)
                if hasByte(below: 0x20, in: word) || hasByte(0x22, in: word) || hasByte(0x5C, in: word) || word & highBits != 0 {
                    break
                }
                offset += 8
            }
            return offset
        }
    }

    /// The first index at or after `start` where a word of eight bytes begins that is not all
    /// spaces, or where fewer than eight bytes are left.
    static func spacesEnd(in bytes: [UInt8], from start: Int) -> Int {
        bytes.withUnsafeBytes { raw in
            var offset = start
            while offset >= 0, raw.count - offset >= 8, raw.loadUnaligned(fromByteOffset: offset, as: UInt64.self) == ones &* 0x20 {
                offset += 8
            }
            return offset
        }
    }

    /// Whether a byte of `word` is below `limit` (at most 0x80). Exact: with every byte at or above
    /// `limit` no subtraction borrows, and no high bit survives `& ~word`; the lowest byte below
    /// `limit` borrows and keeps its high bit.
    @inline(__always)
    static func hasByte(below limit: UInt64, in word: UInt64) -> Bool {
        (word &- ones &* limit) & ~word & highBits != 0
    }

    /// Whether a byte of `word` equals `byte`.
    @inline(__always)
    static func hasByte(_ byte: UInt64, in word: UInt64) -> Bool {
        hasByte(below: 1, in: word ^ (ones &* byte))
    }
}
