/// One event of a webhook body as the bridge publishes it: the values its message needs and where
/// its bytes lie, read by ``WebhookPayload/scan(_:parser:)`` without building the event's tree.
public struct EventSummary: Sendable, Equatable {
    /// The event's `action` (never empty).
    public var action: String
    /// `subject.model` when `subject` is an object and `model` a string.
    public var subjectModel: String?
    /// `subject.id` when it is a number or a string.
    public var subjectID: JSONValue?
    /// `branch` when it is an integer that fits 64 bits.
    public var branch: Int64?
    /// Where the event and each of its members lie in the body.
    public var source: EventSource
}

/// The events of one webhook body as ``WebhookPayload/scan(_:parser:)`` reads them.
public struct EventSummaries: Sendable, Equatable {
    /// The body's `request_time` (or `_request_time`), `.null` when absent.
    public var requestTime: JSONValue
    /// Whether the body has a `request_time` or `_request_time` at all (`requestTime` is `.null`
    /// both when it has none and when it says `null`).
    public var hasRequestTime: Bool
    public var events: [EventSummary]
}

extension EventSummaries {
    /// The envelope of the event at `index` (its position in the body).
    public func envelope(at index: Int, bodyDigest: String, receivedAt: UTCTimestamp) -> EventEnvelope {
        EventEnvelope(summary: events[index], index: index, bodyDigest: bodyDigest, requestTime: requestTime, receivedAt: receivedAt)
    }
}

/// What ``WebhookPayload/scan(_:parser:)`` makes of a body.
public enum ScannedWebhookPayload: Sendable, Equatable {
    case events(EventSummaries)
    case unrecognised(reason: String)
}

extension WebhookPayload {
    /// Classifies `body` exactly as ``parse(_:parser:)`` does (the same events, the same
    /// `unrecognised` reasons, the same JSON errors at the same offsets) without the events' trees: every
    /// byte is validated, and only what a message needs is decoded (each event's `action`,
    /// `subject.model`, `subject.id`, `branch`, the body's request time). The bridge's request path
    /// uses this; ``EventEnvelope/init(summary:index:bodyDigest:requestTime:receivedAt:)`` splices
    /// the envelope from the event's own bytes. Never throws; pure and thread-safe.
    public static func scan(_ body: [UInt8], parser: JSONParser = JSONParser()) -> ScannedWebhookPayload {
        var reader = JSONReader(bytes: body, maximumDepth: parser.maximumDepth)
        do {
            return try reader.scanWebhookBody()
        } catch {
            return .unrecognised(reason: "not JSON: \(error)")
        }
    }
}

extension JSONReader {
    /// What the last `"events"` member of the root object held.
    private enum EventsMember {
        case absent
        case notAnArray
        /// The summaries of its events, or the reason of the first element that is not an event.
        case array([EventSummary], failure: String?)
    }

    /// The scan behind ``WebhookPayload/scan(_:parser:)``. Mirrors `parseValue(depth: 0)` on the root
    /// and `WebhookPayload.parse`'s classification; every error is the one the tree parser throws.
    mutating func scanWebhookBody() throws(JSONParseError) -> ScannedWebhookPayload {
        skipWhitespace()
        guard index < bytes.count else { throw error("unexpected end of input") }
        guard bytes[index] == UInt8(ascii: "{") else {
            try skipValue(depth: 0)
            try expectEnd()
            return .unrecognised(reason: "JSON root is not an object")
        }
        let depth = 1
        guard depth <= maximumDepth else { throw error("nesting deeper than \(maximumDepth)") }
        index += 1
        var events = EventsMember.absent
        var requestTime: JSONValue?
        var legacyRequestTime: JSONValue?
        try forEachMember { (reader: inout JSONReader, key: String, _: Int) throws(JSONParseError) in
            switch key {
            case "events":
                if reader.index < reader.bytes.count, reader.bytes[reader.index] == UInt8(ascii: "[") {
                    events = try reader.scanEvents(depth: depth + 1)
                } else {
                    try reader.skipValue(depth: depth)
                    events = .notAnArray
                }
            case "request_time": requestTime = try reader.parseValue(depth: depth)
            case "_request_time": legacyRequestTime = try reader.parseValue(depth: depth)
            default: try reader.skipValue(depth: depth)
            }
        }
        try expectEnd()
        switch events {
        case .absent: return .unrecognised(reason: "no \"events\" key")
        case .notAnArray: return .unrecognised(reason: "\"events\" is not an array")
        case .array(_, let failure?): return .unrecognised(reason: failure)
        case .array(let summaries, nil):
            return .events(
                EventSummaries(
                    requestTime: requestTime ?? legacyRequestTime ?? .null, hasRequestTime: requestTime != nil || legacyRequestTime != nil,
                    events: summaries))
        }
    }

    private mutating func expectEnd() throws(JSONParseError) {
        skipWhitespace()
        if index != bytes.count { throw error("unexpected data after the JSON value") }
    }

    /// The members of the object whose `{` was just consumed, up to and including its `}`: reads
    /// each name and `:`, then lets `value` read the value (given the name and the offset of its
    /// opening quote, where the member's bytes begin). Separators and errors as `parseObject`.
    /// `names: false` validates the names without decoding them (the closure gets `""`).
    private mutating func forEachMember(
        names: Bool = true, _ value: (inout JSONReader, _ key: String, _ memberStart: Int) throws(JSONParseError) -> Void
    ) throws(JSONParseError) {
        skipWhitespace()
        if index < bytes.count, bytes[index] == UInt8(ascii: "}") {
            index += 1
            return
        }
        while true {
            skipWhitespace()
            guard index < bytes.count, bytes[index] == UInt8(ascii: "\"") else { throw error("expected a member name") }
            let memberStart = index
            let key: String
            if names {
                key = try parseString()
            } else {
                try skipString()
                key = ""
            }
            skipWhitespace()
            guard index < bytes.count, bytes[index] == UInt8(ascii: ":") else { throw error("expected ':'") }
            index += 1
            skipWhitespace()
            try value(&self, key, memberStart)
            if try separator(closing: UInt8(ascii: "}")) { continue }
            return
        }
    }

    /// The `"events"` array at `[`, as `parseArray(depth:recordingEvents: true)` reads it.
    private mutating func scanEvents(depth: Int) throws(JSONParseError) -> EventsMember {
        guard depth <= maximumDepth else { throw error("nesting deeper than \(maximumDepth)") }
        index += 1
        var summaries: [EventSummary] = []
        var failure: String?
        var position = 0
        skipWhitespace()
        if index < bytes.count, bytes[index] == UInt8(ascii: "]") {
            index += 1
            return .array(summaries, failure: nil)
        }
        while true {
            skipWhitespace()
            if index < bytes.count, bytes[index] == UInt8(ascii: "{") {
                let summary = try scanEvent(depth: depth + 1)
                if failure == nil {
                    if let summary {
                        summaries.append(summary)
                    } else {
                        failure = "event \(position) has no \"action\" string"
                    }
                }
            } else {
                try skipValue(depth: depth)
                if failure == nil { failure = "event \(position) is not an object" }
            }
            position += 1
            if try separator(closing: UInt8(ascii: "]")) { continue }
            return .array(summaries, failure: failure)
        }
    }

    /// One event object at `{`; `nil` when its (last) `action` is not a non-empty string. Duplicate
    /// names: the last wins, as ``JSONObject``'s subscript has it.
    private mutating func scanEvent(depth: Int) throws(JSONParseError) -> EventSummary? {
        guard depth <= maximumDepth else { throw error("nesting deeper than \(maximumDepth)") }
        let start = index
        index += 1
        var members: [EventSource.Member] = []
        var action: JSONValue?
        var branch: JSONValue?
        var subject: (model: JSONValue?, id: JSONValue?) = (nil, nil)
        try forEachMember { (reader: inout JSONReader, key: String, memberStart: Int) throws(JSONParseError) in
            switch key {
            case "action": action = try reader.parseValue(depth: depth)
            case "branch": branch = try reader.parseValue(depth: depth)
            case "subject": subject = try reader.scanSubject(depth: depth)
            default: try reader.skipValue(depth: depth)
            }
            members.append(EventSource.Member(key: key, range: memberStart..<reader.index))
        }
        guard case .string(let name)? = action, !name.isEmpty else { return nil }
        let id: JSONValue?
        switch subject.id {
        case .number?, .string?: id = subject.id
        default: id = nil
        }
        return EventSummary(
            action: name, subjectModel: subject.model?.stringValue, subjectID: id, branch: branch?.int64Value,
            source: EventSource(body: bytes, range: start..<index, members: members))
    }

    /// `subject`'s `model` and `id` when it is an object (`nil`s otherwise); the rest is validated only.
    private mutating func scanSubject(depth: Int) throws(JSONParseError) -> (model: JSONValue?, id: JSONValue?) {
        guard index < bytes.count, bytes[index] == UInt8(ascii: "{") else {
            try skipValue(depth: depth)
            return (nil, nil)
        }
        let objectDepth = depth + 1
        guard objectDepth <= maximumDepth else { throw error("nesting deeper than \(maximumDepth)") }
        index += 1
        var found: (model: JSONValue?, id: JSONValue?) = (nil, nil)
        try forEachMember { (reader: inout JSONReader, key: String, _: Int) throws(JSONParseError) in
            switch key {
            case "model": found.model = try reader.parseValue(depth: objectDepth)
            case "id": found.id = try reader.parseValue(depth: objectDepth)
            default: try reader.skipValue(depth: objectDepth)
            }
        }
        return found
    }

    /// Validates one value exactly as `parseValue(depth:)` would (the same errors at the same
    /// offsets), building nothing.
    mutating func skipValue(depth: Int) throws(JSONParseError) {
        guard index < bytes.count else { throw error("unexpected end of input") }
        switch bytes[index] {
        case UInt8(ascii: "{"):
            let objectDepth = depth + 1
            guard objectDepth <= maximumDepth else { throw error("nesting deeper than \(maximumDepth)") }
            index += 1
            try forEachMember(names: false) { (reader: inout JSONReader, _: String, _: Int) throws(JSONParseError) in
                try reader.skipValue(depth: objectDepth)
            }
        case UInt8(ascii: "["): try skipArray(depth: depth + 1)
        case UInt8(ascii: "\""): try skipString()
        case UInt8(ascii: "t"): _ = try expect("true", value: .bool(true))
        case UInt8(ascii: "f"): _ = try expect("false", value: .bool(false))
        case UInt8(ascii: "n"): _ = try expect("null", value: .null)
        case UInt8(ascii: "-"), UInt8(ascii: "0")...UInt8(ascii: "9"): _ = try scanNumber()
        default: throw error("unexpected character")
        }
    }

    private mutating func skipArray(depth: Int) throws(JSONParseError) {
        guard depth <= maximumDepth else { throw error("nesting deeper than \(maximumDepth)") }
        index += 1
        skipWhitespace()
        if index < bytes.count, bytes[index] == UInt8(ascii: "]") {
            index += 1
            return
        }
        while true {
            skipWhitespace()
            try skipValue(depth: depth)
            if try separator(closing: UInt8(ascii: "]")) { continue }
            return
        }
    }

    /// Validates a string at `"` as `parseString()` does. The common case (no escape, ASCII) is one
    /// pass with no allocation; a string with an escape is handed to `parseString()` itself.
    private mutating func skipString() throws(JSONParseError) {
        let quote = index
        index += 1
        let start = index
        index = ByteWords.plainASCIIEnd(in: bytes, from: index)
        var ascii = true
        while index < bytes.count {
            let byte = bytes[index]
            if byte == UInt8(ascii: "\"") {
                if !ascii, String(validating: bytes[start..<index], as: UTF8.self) == nil {
                    throw JSONParseError(reason: "invalid UTF-8 in string", offset: start)
                }
                index += 1
                return
            }
            if byte == UInt8(ascii: "\\") {
                index = quote
                _ = try parseString()
                return
            }
            if byte < 0x20 { throw error("unescaped control character in string") }
            if byte >= 0x80 { ascii = false }
            index += 1
        }
        throw error("unterminated string")
    }
}
