import TutorCruncher
import TutorCruncherEvents

/// Events for handler tests, made the way they reach a service: a webhook body in TutorCruncher's
/// layout, split and enveloped by the bridge's own code (`EventEnvelope`), decoded by the consumer
/// library's (`TutorCruncherEvent(envelope:)`). No broker, no network. Thread-safe.
///
/// ```swift
/// let event = try TestEvents.event(.clientPaidInvoice, subject: TestSubjects.invoice(id: 41, [("gross", "120.00")]))
/// #expect(event.subject?.invoice?.gross == Decimal(string: "120.00"))
/// ```
public enum TestEvents {
    /// The time every test event is stamped as received (2025-11-29 18:35:51.123456 UTC).
    public static let receivedAt = UTCTimestamp(secondsSinceEpoch: 1_764_441_351, microseconds: 123_456)

    /// One event of `action` about `subject`, with the sender's other fields (`verb`, `timestamp`,
    /// `branch`, `actor`, `extra_msg`) real-shaped; `extra` adds or replaces top-level event fields.
    /// Its `eventID` is `<digest>-0`, the digest derived from `id` (give distinct ids for distinct events).
    public static func event(
        _ action: TutorCruncherAction, subject: TestSubject? = nil, branch: Int? = 590, id: Int = 1,
        timestamp: String = "2025-03-05T15:26:20.558919Z", extra: [(String, TestJSON)] = []
    ) throws -> TutorCruncherEvent {
        var fields: [(String, TestJSON)] = [
            ("action", .string(action.rawValue)),
            ("verb", .string(action.details?.verb ?? action.rawValue)),
            ("timestamp", .string(timestamp)),
            ("actor", .object([("name", "Test Admin"), ("id", 7), ("user_id", 8), ("url", "https://secure.tutorcruncher.com/api/admins/7/")])),
            ("extra_msg", ""),
        ]
        if let branch { fields.append(("branch", .int(branch))) }
        if let subject { fields.append(("subject", subject.json)) }
        for (key, value) in extra {
            fields.removeAll { $0.0 == key }
            fields.append((key, value))
        }
        return try events(body: .object([("request_time", 1_700_000_000), ("events", .array([.object(fields)]))]), id: id)[0]
    }

    /// Every event of a whole webhook body, as the bridge splits it (e.g. one of TutorCruncher's
    /// example payloads, read from a file).
    public static func events(fromBody body: [UInt8], id: Int = 1) throws -> [TutorCruncherEvent] {
        guard case .events(let batch) = WebhookPayload.parse(body) else { throw TestEventError.notAnEventBatch }
        let digest = String(repeating: "0", count: 48) + String(String(id, radix: 16).suffix(16)).leftPadded(to: 16)
        return try EventEnvelope.envelopes(for: batch, bodyDigest: digest, receivedAt: receivedAt).map { try TutorCruncherEvent(envelope: $0.body) }
    }

    static func events(body: TestJSON, id: Int) throws -> [TutorCruncherEvent] {
        try events(fromBody: JSONWriter.bytes(body.value), id: id)
    }
}

public enum TestEventError: Error, Sendable {
    /// The body is not a TutorCruncher event batch (`{"events": [...]}`).
    case notAnEventBatch
}

extension String {
    fileprivate func leftPadded(to width: Int) -> String {
        count >= width ? self : String(repeating: "0", count: width - count) + self
    }
}
