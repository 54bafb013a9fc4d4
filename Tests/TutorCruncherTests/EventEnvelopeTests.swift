import Testing
import TutorCruncher
import TutorCruncherSignature

@Suite struct EventEnvelopeTests {
    let receivedAt = UTCTimestamp(secondsSinceEpoch: 1_741_188_380, microseconds: 558_919)

    func envelopes(_ bytes: [UInt8]) throws -> [EventEnvelope] {
        guard case .events(let batch) = WebhookPayload.parse(bytes) else {
            Issue.record("not events")
            return []
        }
        return EventEnvelope.envelopes(for: batch, bodyDigest: sha256Hex(bytes), receivedAt: receivedAt)
    }

    @Test(arguments: Fixture.examples)
    func envelopeIsLosslessForEveryExample(name: String) throws {
        let bytes = try Fixture.bytes(name)
        let original = try JSONParser().parse(bytes)
        let originalEvents = try #require(original["events"]?.arrayValue)
        let built = try envelopes(bytes)
        #expect(built.count == originalEvents.count)
        for (envelope, originalEvent) in zip(built, originalEvents) {
            // Re-parse what goes on the wire, then compare every original key's value.
            let published = try JSONParser().parse(envelope.body)
            let originalObject = try #require(originalEvent.objectValue)
            for member in originalObject {
                #expect(published[member.key] == member.value, "key \(member.key) changed")
            }
            // Original keys keep their order, at the front.
            #expect(Array(try #require(published.objectValue).keys.prefix(originalObject.count)) == originalObject.keys)
        }
    }

    /// A signed body whose `request_time` is large and no time (found in review: 115 KB of body
    /// made 100 MB of envelopes) costs each envelope a `null`, not a copy.
    @Test func aLargeOrNonScalarRequestTimeIsNotCopiedIntoEveryEnvelope() throws {
        let zeros = Array(repeating: "0", count: 50_000).joined(separator: ",")
        let events = Array(repeating: #"{"action":"a"}"#, count: 1000).joined(separator: ",")
        let body = Array(#"{"request_time":[\#(zeros)],"events":[\#(events)]}"#.utf8)
        let built = try envelopes(body)
        #expect(built.count == 1000)
        #expect(built.map(\.body.count).reduce(0, +) < 300 * 1000)  // about 220 bytes each; 100 MB before
        #expect(try JSONParser().parse(try #require(built.first).body)["request_time"] == .null)
        guard case .events(let summaries) = WebhookPayload.scan(body) else {
            Issue.record("not events")
            return
        }
        let scanned = EventEnvelope(summary: summaries.events[0], index: 0, bodyDigest: sha256Hex(body), requestTime: summaries.requestTime, receivedAt: receivedAt)
        #expect(scanned == built[0])
    }

    @Test func requestTimesThatAreCopiedAndThoseThatAreNot() {
        let long = String(repeating: "9", count: 65)
        #expect(EventEnvelope.copiedRequestTime(.number("1741188380")) == .number("1741188380"))
        #expect(EventEnvelope.copiedRequestTime(.number(String(long.dropLast()))) == .number(String(long.dropLast())))
        #expect(EventEnvelope.copiedRequestTime(.number(long)) == .null)
        #expect(EventEnvelope.copiedRequestTime(.string("2025-03-05T15:26:20Z")) == .string("2025-03-05T15:26:20Z"))
        #expect(EventEnvelope.copiedRequestTime(.string(String(repeating: "x", count: 257))) == .null)
        #expect(EventEnvelope.copiedRequestTime(.bool(true)) == .bool(true))
        #expect(EventEnvelope.copiedRequestTime(.null) == .null)
        #expect(EventEnvelope.copiedRequestTime(.array([.number("1")])) == .null)
        #expect(EventEnvelope.copiedRequestTime(.object(JSONObject())) == .null)
    }

    @Test func missingOptionalKeysBecomeExplicitNulls() throws {
        let body = Array(#"{"events": [{"action": "LOGIN", "verb": "Logged in", "timestamp": "2025-01-01T00:00:00.000001Z"}]}"#.utf8)
        let envelope = try #require(try envelopes(body).first)
        let object = try JSONParser().parse(envelope.body)
        for key in ["branch", "actor", "subject", "extra_msg", "request_time"] {
            #expect(object[key] == .null, "\(key) should be null")
        }
        #expect(envelope.subjectModel == nil)
        #expect(envelope.subjectID == nil)
        #expect(envelope.branch == nil)
    }

    @Test func bridgeKeysAreAdded() throws {
        let bytes = try Fixture.bytes("changed-contractor-status.2023.json")
        let envelope = try #require(try envelopes(bytes).first)
        let object = try JSONParser().parse(envelope.body)
        #expect(object["event_id"] == .string("\(sha256Hex(bytes))-0"))
        #expect(object["request_time"] == .number("1682070189"))
        #expect(object["received_at"] == .string("2025-03-05T15:26:20.558919Z"))
        #expect(Array(try #require(object.objectValue).keys.suffix(3)) == ["event_id", "request_time", "received_at"])
        #expect(envelope.subjectModel == "Tutor")
        #expect(envelope.subjectID == .number("1865751"))
        #expect(envelope.branch == 17597)
        #expect(envelope.action == "CHANGED_CONTRACTOR_STATUS")
    }

    @Test func eventIDsAreStableForTheSameBytesAndDifferForOthers() throws {
        let body = Array(#"{"request_time": 9, "events": [{"action": "A"}, {"action": "B"}]}"#.utf8)
        let first = try envelopes(body).map(\.eventID)
        let again = try envelopes(body).map(\.eventID)
        #expect(first == again)
        #expect(first[0].hasSuffix("-0") && first[1].hasSuffix("-1"))
        #expect(Set(first).count == 2)
        let other = try envelopes(Array(#"{"request_time": 10, "events": [{"action": "A"}, {"action": "B"}]}"#.utf8)).map(\.eventID)
        #expect(Set(first).isDisjoint(with: other))
    }

    @Test func senderValuesForBridgeKeysNeverSurviveInAnyCopy() throws {
        let body = Array(
            #"{"request_time": 5, "events": [{"event_id": "spoofed", "action": "A", "received_at": "x", "event_id": "again", "request_time": 1}]}"#.utf8)
        let envelope = try #require(try envelopes(body).first)
        let members = try #require(try JSONParser().parse(envelope.body).objectValue).members
        #expect(members.filter { $0.key == "event_id" }.count == 1)
        #expect(members.filter { $0.key == "received_at" }.count == 1)
        #expect(members.filter { $0.key == "request_time" }.map(\.value) == [.number("5")])
        #expect(!members.contains { $0.value == .string("spoofed") || $0.value == .string("again") })
        #expect(envelope.object["event_id"] == .string(envelope.eventID))
    }

    @Test func stringSubjectIDIsKept() throws {
        let body = Array(#"{"events": [{"action": "A", "subject": {"model": "Note", "id": "n-1"}}]}"#.utf8)
        #expect(try envelopes(body).first?.subjectID == .string("n-1"))
    }
}

@Suite struct UTCTimestampTests {
    @Test func formatsWithMicroseconds() {
        #expect(UTCTimestamp(secondsSinceEpoch: 0).iso8601 == "1970-01-01T00:00:00.000000Z")
        #expect(UTCTimestamp(secondsSinceEpoch: 951_782_400, microseconds: 7).iso8601 == "2000-02-29T00:00:00.000007Z")
        #expect(UTCTimestamp(secondsSinceEpoch: -1).iso8601 == "1969-12-31T23:59:59.000000Z")
    }

    @Test func parsesTutorCruncherTimestamps() throws {
        let parsed = try #require(UTCTimestamp(iso8601: "2025-03-05T15:26:20.558919Z"))
        #expect(parsed.iso8601 == "2025-03-05T15:26:20.558919Z")
        #expect(UTCTimestamp(iso8601: "2025-03-05T16:26:20.5+01:00") == UTCTimestamp(iso8601: "2025-03-05T15:26:20.500000Z"))
        #expect(UTCTimestamp(iso8601: "2025-03-05T15:26:20Z")?.microseconds == 0)
    }

    @Test(arguments: ["", "2025-03-05", "2025-13-05T15:26:20Z", "2025-03-05T15:26:20", "2025-03-05T15:26:20.Z", "2025-03-05T15:26:20Zjunk"])
    func rejectsMalformedTimestamps(text: String) {
        #expect(UTCTimestamp(iso8601: text) == nil)
    }

    @Test func nowIsRecent() {
        #expect(UTCTimestamp.now().secondsSinceEpoch > 1_700_000_000)
    }
}
