/// A verified webhook body, classified.
///
/// TutorCruncher sends `{"request_time": N, "events": [...]}` (older senders: `_request_time`,
/// newest docs: neither). Anything else that is correctly signed (a tutor public profile posted to
/// a sub-path, or bytes that are not JSON at all) is ``unrecognised(reason:)``: genuine data the
/// bridge forwards unchanged rather than rejects.
public enum WebhookPayload: Sendable, Equatable {
    case events(EventBatch)
    case unrecognised(reason: String)

    /// Classifies `body`. Never throws: what cannot be read as an event batch is `unrecognised`.
    public static func parse(_ body: [UInt8], parser: JSONParser = JSONParser()) -> WebhookPayload {
        let parsed: (root: JSONValue, events: [EventSource]?)
        do {
            parsed = try parser.parseWebhookBody(body)
        } catch {
            return .unrecognised(reason: "not JSON: \(error)")
        }
        let root = parsed.root
        let sources = parsed.events
        guard case .object(let object) = root else { return .unrecognised(reason: "JSON root is not an object") }
        guard let eventsValue = object["events"] else { return .unrecognised(reason: "no \"events\" key") }
        guard case .array(let elements) = eventsValue else { return .unrecognised(reason: "\"events\" is not an array") }
        var events: [JSONObject] = []
        events.reserveCapacity(elements.count)
        for (index, element) in elements.enumerated() {
            guard case .object(let event) = element else {
                return .unrecognised(reason: "event \(index) is not an object")
            }
            guard case .string(let action) = event["action"], !action.isEmpty else {
                return .unrecognised(reason: "event \(index) has no \"action\" string")
            }
            events.append(event)
        }
        let requestTime = object["request_time"] ?? object["_request_time"] ?? .null
        return .events(EventBatch(requestTime: requestTime, events: events, sources: sources ?? []))
    }
}

/// The events of one webhook body, in order, with the body's request time (`.null` when absent).
public struct EventBatch: Sendable, Equatable {
    public var requestTime: JSONValue
    public var events: [JSONObject]
    /// Where each event lies in the body, when the batch was parsed from one (same order as
    /// `events`); envelopes are then spliced from the exact bytes.
    public var sources: [EventSource]

    public init(requestTime: JSONValue, events: [JSONObject], sources: [EventSource] = []) {
        self.requestTime = requestTime
        self.events = events
        self.sources = sources.count == events.count ? sources : []
    }
}
