import TCBridgeContract

/// The normalised message body the bridge publishes for one event (envelope format version 1).
///
/// It is the event object exactly as received (every member's bytes as sent, in order: numbers
/// as written, escapes as written, lone surrogate escapes included), with `branch`, `actor`,
/// `subject` and `extra_msg` added as `null` where absent, followed by three keys the bridge adds:
/// `event_id`, `request_time`, `received_at`. Members the sender named like one of those three are
/// dropped, every copy of them, so a body never carries a sender's value for a bridge key.
public struct EventEnvelope: Sendable, Equatable {
    /// Bumped on any incompatible change to the body layout; published in the
    /// `tc-envelope-version` header.
    public static let formatVersion: Int64 = BridgeContract.envelopeFormatVersion

    /// Keys made explicit (`null`) when the event lacks them.
    public static let optionalEventKeys = ["branch", "actor", "subject", "extra_msg"]

    /// `<hex SHA-256 of the raw body>-<index of the event in the body>`: the same for a sender
    /// retry of the same bytes.
    public let eventID: String
    public let action: String
    /// `subject.model`, e.g. `Tutor`, `Credit Request`; `nil` when the event has no subject.
    public let subjectModel: String?
    /// `subject.id` when it is an integer or string.
    public let subjectID: JSONValue?
    public let branch: Int64?
    /// The full envelope as parsed values (lone surrogates read as U+FFFD). Parsed from ``body``
    /// on each use: the bridge itself only needs the bytes.
    public var object: JSONObject { (try? JSONParser().parse(body))?.objectValue ?? JSONObject() }

    /// The envelope as published: UTF-8 JSON.
    public let body: [UInt8]

    /// Keys only the bridge writes.
    public static let bridgeKeys: Set<String> = ["event_id", "request_time", "received_at"]

    /// - Parameter source: where the event lies in the body it came from; the body is then spliced
    ///   from those exact bytes. Without it the body is written from `event`.
    public init(
        event: JSONObject, index: Int, bodyDigest: String, requestTime: JSONValue, receivedAt: UTCTimestamp,
        source: EventSource? = nil
    ) {
        var added: [JSONObject.Member] = []
        for key in Self.optionalEventKeys where event[key] == nil {
            added.append(JSONObject.Member(key: key, value: .null))
        }
        let eventID = "\(bodyDigest)-\(index)"
        added.append(JSONObject.Member(key: "event_id", value: .string(eventID)))
        added.append(JSONObject.Member(key: "request_time", value: Self.copiedRequestTime(requestTime)))
        added.append(JSONObject.Member(key: "received_at", value: .string(receivedAt.iso8601)))
        if let source, let members = source.members {
            self.body = Self.splice(
                members: members, of: source, missing: added.dropLast(3).map(\.key), eventID: eventID, requestTime: requestTime,
                receivedAt: receivedAt)
        } else {
            let kept = event.members.filter { !Self.bridgeKeys.contains($0.key) }
            self.body = JSONWriter.bytes(.object(JSONObject(kept + added)))
        }
        self.eventID = eventID
        self.action = event["action"]?.stringValue ?? ""
        let subject = event["subject"]?.objectValue
        self.subjectModel = subject?["model"]?.stringValue
        switch subject?["id"] {
        case .some(.number(let literal)): self.subjectID = .number(literal)
        case .some(.string(let text)): self.subjectID = .string(text)
        default: self.subjectID = nil
        }
        self.branch = event["branch"]?.int64Value
    }

    /// The value copied into every envelope's `request_time`: the sender's when it is `null`, a
    /// boolean, a number of at most 64 characters or a string of at most 256 bytes; otherwise
    /// `null`. An array, an object or an overlong value is no time, and copying it into each of a
    /// body's events would multiply it (a 100 KB value and 1,000 events: 100 MB of envelopes).
    /// O(1): only the value's kind and stored length are looked at.
    public static func copiedRequestTime(_ value: JSONValue) -> JSONValue {
        switch value {
        case .null, .bool: value
        case .number(let literal): literal.utf8.count <= 64 ? value : .null
        case .string(let text): text.utf8.count <= 256 ? value : .null
        case .array, .object: .null
        }
    }

    /// The envelope of an event read by ``WebhookPayload/scan(_:parser:)``: the same bytes as
    /// ``init(event:index:bodyDigest:requestTime:receivedAt:source:)`` gives the parsed event with its
    /// source, without the event's tree.
    public init(summary: EventSummary, index: Int, bodyDigest: String, requestTime: JSONValue, receivedAt: UTCTimestamp) {
        let eventID = "\(bodyDigest)-\(index)"
        let members = summary.source.members ?? []
        let missing = Self.optionalEventKeys.filter { key in !members.contains { $0.key == key } }
        self.body = Self.splice(
            members: members, of: summary.source, missing: missing, eventID: eventID, requestTime: requestTime, receivedAt: receivedAt)
        self.eventID = eventID
        self.action = summary.action
        self.subjectModel = summary.subjectModel
        self.subjectID = summary.subjectID
        self.branch = summary.branch
    }

    /// The envelope's bytes: the event's members as sent (the bridge's keys dropped), `missing`
    /// optional keys as `null`, then the bridge's three keys.
    private static func splice(
        members: [EventSource.Member], of source: EventSource, missing: [String], eventID: String, requestTime: JSONValue,
        receivedAt: UTCTimestamp
    ) -> [UInt8] {
        var body: [UInt8] = [UInt8(ascii: "{")]
        body.reserveCapacity(source.range.count + 256)
        var first = true
        for member in members where !bridgeKeys.contains(member.key) {
            if !first { body.append(UInt8(ascii: ",")) }
            first = false
            body.append(contentsOf: source.body[member.range])
        }
        // The added members' names and the id and time need no escaping: written as they are.
        for key in missing {
            if !first { body.append(UInt8(ascii: ",")) }
            first = false
            body.append(UInt8(ascii: "\""))
            body.append(contentsOf: key.utf8)
            body.append(contentsOf: #"":null"#.utf8)
        }
        if !first { body.append(UInt8(ascii: ",")) }
        body.append(contentsOf: #""event_id":"#.utf8)
        if eventID.utf8.allSatisfy({ $0 >= 0x21 && $0 < 0x7F && $0 != UInt8(ascii: "\"") && $0 != UInt8(ascii: "\\") }) {
            body.append(UInt8(ascii: "\""))
            body.append(contentsOf: eventID.utf8)
            body.append(UInt8(ascii: "\""))
        } else {
            JSONWriter.writeString(eventID, into: &body)  // a digest from elsewhere than sha256Hex
        }
        body.append(contentsOf: #","request_time":"#.utf8)
        JSONWriter.write(copiedRequestTime(requestTime), into: &body)
        body.append(contentsOf: #","received_at":""#.utf8)
        body.append(contentsOf: receivedAt.iso8601.utf8)
        body.append(contentsOf: #""}"#.utf8)
        return body
    }

    /// One envelope per event of `batch`, in order.
    public static func envelopes(for batch: EventBatch, bodyDigest: String, receivedAt: UTCTimestamp) -> [EventEnvelope] {
        batch.events.enumerated().map { index, event in
            EventEnvelope(
                event: event, index: index, bodyDigest: bodyDigest, requestTime: batch.requestTime, receivedAt: receivedAt,
                source: batch.sources.isEmpty ? nil : batch.sources[index])
        }
    }
}
