import TestSupport
import TutorCruncher
import TutorCruncherEvents
import TutorCruncherSignature

/// Builds envelopes exactly as the bridge does, from webhook bodies.
enum Envelopes {
    static let receivedAt = UTCTimestamp(secondsSinceEpoch: 1_764_441_351, microseconds: 123_456)

    static func events(fromBody body: [UInt8]) throws -> [TutorCruncherEvent] {
        guard case .events(let batch) = WebhookPayload.parse(body) else { throw Unrecognised() }
        return try EventEnvelope.envelopes(for: batch, bodyDigest: sha256Hex(body), receivedAt: receivedAt)
            .map { try TutorCruncherEvent(envelope: $0.body) }
    }

    static func event(_ json: String) throws -> TutorCruncherEvent {
        try events(fromBody: Array(#"{"request_time": 1700000000, "events": [\#(json)]}"#.utf8))[0]
    }

    static func fixture(_ name: String) throws -> TutorCruncherEvent {
        try events(fromBody: Repository.fixture(name))[0]
    }

    struct Unrecognised: Error {}
}
