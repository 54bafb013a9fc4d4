import TutorCruncher
import TutorCruncherSignature

/// The checks the fuzzer (`tc-fuzz`) runs on every input, shared with the regression tests.
///
/// Uses only the public API a request takes through the bridge: signature, parse, envelopes.
/// Returns the invariants `body` violates (empty when none); a crash inside the code under test
/// is a finding too. Keep it to the public API so it survives internal rewrites.
public enum FuzzChecks {
    static let verifier = WebhookVerifier(keys: [WebhookSigningKey("fuzz-key"), WebhookSigningKey("")])
    static let bridgeKeys = ["event_id", "request_time", "received_at"]

    public static func violations(_ body: [UInt8]) -> [String] {
        var problems: [String] = []
        func check(_ condition: Bool, _ message: @autoclosure () -> String) {
            if !condition { problems.append(message()) }
        }

        // Signature: the one computed over the input verifies; a changed one, or the input used as
        // the header, does not.
        let signature = verifier.signature(for: body)
        check(signature.utf8.count == 64 && signature.utf8.allSatisfy(isLowerHex), "signature is not 64 lower-case hex digits")
        check(verifier.verify(body: body, signatureHeader: signature) == .valid, "own signature does not verify")
        check(verifier.verify(body: body, signatureHeader: " \(signature.uppercased())\t") == .valid, "upper-case signature does not verify")
        var flipped = Array(signature.utf8)
        flipped[flipped.count - 1] = flipped[flipped.count - 1] == UInt8(ascii: "0") ? UInt8(ascii: "1") : UInt8(ascii: "0")
        check(verifier.verify(body: body, signatureHeader: String(decoding: flipped, as: UTF8.self)) == .mismatch, "altered signature accepted")
        let rotated = WebhookVerifier.signature(for: body, key: WebhookSigningKey(""))
        check(verifier.verify(body: body, signatureHeader: rotated) == .valid, "signature under the second key does not verify")
        check(verifier.verify(body: body, signatureHeader: nil) == .missing, "absent header not reported missing")
        check(verifier.verify(body: body, signatureHeader: String(decoding: body, as: UTF8.self)) != .valid, "input as its own header verifies")

        let digest = sha256Hex(body)
        check(digest.utf8.count == 64 && digest.utf8.allSatisfy(isLowerHex), "digest is not 64 lower-case hex digits")

        // Parse: not JSON must say so (the bridge picks the content type from the reason's prefix).
        let isJSON = (try? JSONParser().parse(body)) != nil
        let parsed = WebhookPayload.parse(body)
        // The bridge's request path reads bodies with `scan`, which builds no tree: it must make of
        // every input exactly what `parse` makes of it, down to the envelopes' bytes.
        problems += scanDisagreements(body, parsed: parsed)
        let batch: EventBatch
        switch parsed {
        case .unrecognised(let reason):
            check(!reason.isEmpty, "empty unrecognised reason")
            check(reason.hasPrefix("not JSON") == !isJSON, "reason \(reason.prefix(80)) disagrees with JSONParser (JSON: \(isJSON))")
            return problems
        case .events(let parsed):
            check(isJSON, "events from bytes JSONParser rejects")
            batch = parsed
        }

        // Envelopes: one per event, each a JSON object carrying the bridge's keys exactly once.
        let receivedAt = UTCTimestamp.now()
        let envelopes = EventEnvelope.envelopes(for: batch, bodyDigest: digest, receivedAt: receivedAt)
        check(envelopes.count == batch.events.count, "\(envelopes.count) envelopes for \(batch.events.count) events")
        for (index, envelope) in envelopes.enumerated() {
            check(!envelope.action.isEmpty, "envelope \(index): empty action")
            check(envelope.eventID == "\(digest)-\(index)", "envelope \(index): event id \(envelope.eventID)")
            guard case .object(let object)? = try? JSONParser().parse(envelope.body) else {
                problems.append("envelope \(index): body is not a JSON object")
                continue
            }
            for key in bridgeKeys {
                let count = object.keys.filter { $0 == key }.count
                check(count == 1, "envelope \(index): \(key) occurs \(count) times")
            }
            check(object["event_id"] == .string(envelope.eventID), "envelope \(index): body event_id differs")
            check(object["received_at"] == .string(receivedAt.iso8601), "envelope \(index): body received_at differs")
            check(object["request_time"] == EventEnvelope.copiedRequestTime(batch.requestTime), "envelope \(index): body request_time differs")
            check(object["action"] == .string(envelope.action), "envelope \(index): body action differs")
            for key in EventEnvelope.optionalEventKeys {
                check(object[key] != nil, "envelope \(index): no \(key)")
            }
            // Lossless: the event's own members (bar the bridge's keys) come first, as received.
            if index < batch.events.count {
                let own = batch.events[index].members.filter { !bridgeKeys.contains($0.key) }
                let published = object.members.filter { !bridgeKeys.contains($0.key) }
                check(published.starts(with: own), "envelope \(index): the event's own members changed")
            }
        }
        return problems
    }

    /// Where ``WebhookPayload/scan(_:parser:)`` disagrees with `parsed`, the tree parser's reading of
    /// `body`: the classification, the `unrecognised` reason (JSON errors included) or any envelope.
    public static func scanDisagreements(_ body: [UInt8], parsed: WebhookPayload, parser: JSONParser = JSONParser()) -> [String] {
        switch (parsed, WebhookPayload.scan(body, parser: parser)) {
        case (.unrecognised(let expected), .unrecognised(let reason)):
            return expected == reason ? [] : ["scan says unrecognised (\(reason.prefix(120))), parse (\(expected.prefix(120)))"]
        case (.events(let batch), .events(let summaries)):
            guard summaries.requestTime == batch.requestTime else { return ["scan read another request time"] }
            guard summaries.events.count == batch.events.count else {
                return ["scan found \(summaries.events.count) events, parse \(batch.events.count)"]
            }
            let receivedAt = UTCTimestamp(secondsSinceEpoch: 1_700_000_000, microseconds: 123_456)
            let expected = EventEnvelope.envelopes(for: batch, bodyDigest: "d", receivedAt: receivedAt)
            return summaries.events.indices.compactMap { index in
                summaries.envelope(at: index, bodyDigest: "d", receivedAt: receivedAt) == expected[index]
                    ? nil : "scan's envelope \(index) differs from parse's"
            }
        case (.events, .unrecognised(let reason)):
            return ["scan says unrecognised (\(reason.prefix(120))), parse found events"]
        case (.unrecognised(let reason), .events):
            return ["scan found events, parse says unrecognised (\(reason.prefix(120)))"]
        }
    }

    static func isLowerHex(_ byte: UInt8) -> Bool {
        (UInt8(ascii: "0")...UInt8(ascii: "9")).contains(byte) || (UInt8(ascii: "a")...UInt8(ascii: "f")).contains(byte)
    }
}
