/// The normalised message body the bridge publishes for one event (envelope format version 1).
///
/// It is the event object exactly as received (every key, in order, numbers as written), with
/// `branch`, `actor`, `subject` and `extra_msg` added as `null` where absent, followed by three
/// keys the bridge adds: `event_id`, `request_time`, `received_at`. If the sender ever includes
/// one of those three names itself, the bridge's value replaces it in place (the last one, when the
/// sender repeats the name: earlier ones are dropped, so each name occurs once).
public struct EventEnvelope: Sendable, Equatable {
    /// Bumped on any incompatible change to the body layout; published in the
    /// `tc-envelope-version` header.
    public static let formatVersion: Int64 = 1

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
    /// The full envelope object.
    public let object: JSONObject

    /// The envelope serialised compactly as UTF-8 JSON.
    public var body: [UInt8] { JSONWriter.bytes(.object(object)) }

    /// The keys the bridge adds to every envelope.
    static let bridgeKeys: Set<String> = ["event_id", "request_time", "received_at"]

    public init(event: JSONObject, index: Int, bodyDigest: String, requestTime: JSONValue, receivedAt: UTCTimestamp) {
        var object = Self.droppingEarlierBridgeKeyDuplicates(event)
        for key in Self.optionalEventKeys where object[key] == nil {
            object[key] = .null
        }
        let eventID = "\(bodyDigest)-\(index)"
        object["event_id"] = .string(eventID)
        object["request_time"] = requestTime
        object["received_at"] = .string(receivedAt.iso8601)
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
        self.object = object
    }

    /// `event` without all but the last member of each bridge key name it repeats. Setting a key
    /// replaces only its last member, so an earlier duplicate would reach consumers alongside the
    /// bridge's value (found by the fuzzer: Tests/Fuzz/crashers).
    static func droppingEarlierBridgeKeyDuplicates(_ event: JSONObject) -> JSONObject {
        var lastIndex: [String: Int] = [:]
        var count = 0
        for (index, member) in event.members.enumerated() where bridgeKeys.contains(member.key) {
            lastIndex[member.key] = index
            count += 1
        }
        guard count > lastIndex.count else { return event }
        return JSONObject(event.members.enumerated().filter { index, member in lastIndex[member.key].map { $0 == index } ?? true }.map(\.element))
    }

    /// One envelope per event of `batch`, in order.
    public static func envelopes(for batch: EventBatch, bodyDigest: String, receivedAt: UTCTimestamp) -> [EventEnvelope] {
        batch.events.enumerated().map { index, event in
            EventEnvelope(event: event, index: index, bodyDigest: bodyDigest, requestTime: batch.requestTime, receivedAt: receivedAt)
        }
    }
}
