import Foundation
import FuzzChecks
import Testing
import TutorCruncher

/// Replays the fuzzer's committed inputs through the checks `tc-fuzz` runs (FuzzChecks): every
/// crasher it found (Tests/Fuzz/crashers, one file per finding, kept after the fix) and every seed
/// (Tests/Fuzz/seeds: the TutorCruncher examples and hand-made hostile bodies).
@Suite struct FuzzRegressionTests {
    static let fuzzDirectory = URL(fileURLWithPath: #filePath)
        .deletingLastPathComponent().deletingLastPathComponent().appendingPathComponent("Fuzz")

    static func inputs(_ subdirectory: String) -> [String] {
        let names = (try? FileManager.default.contentsOfDirectory(atPath: fuzzDirectory.appendingPathComponent(subdirectory).path)) ?? []
        return names.filter { !$0.hasPrefix(".") }.sorted()
    }

    static func bytes(_ subdirectory: String, _ name: String) throws -> [UInt8] {
        Array(try Data(contentsOf: fuzzDirectory.appendingPathComponent(subdirectory).appendingPathComponent(name)))
    }

    @Test(arguments: inputs("crashers"))
    func crasherStaysFixed(name: String) throws {
        #expect(FuzzChecks.violations(try Self.bytes("crashers", name)) == [])
    }

    @Test(arguments: inputs("seeds"))
    func seedPassesTheFuzzChecks(name: String) throws {
        #expect(FuzzChecks.violations(try Self.bytes("seeds", name)) == [])
    }

    /// The first finding (crashers/duplicate-bridge-key-received_at), spelled out: an event that
    /// repeats a bridge key used to keep the earlier copy next to the bridge's value.
    @Test func repeatedBridgeKeysOccurOnceInTheEnvelope() throws {
        let body = Array(#"{"events":[{"event_id":"a","action":"A","event_id":"b","received_at":1,"received_at":2}]}"#.utf8)
        #expect(FuzzChecks.violations(body) == [])
        guard case .events(let batch) = WebhookPayload.parse(body) else {
            Issue.record("not events")
            return
        }
        let envelope = try #require(EventEnvelope.envelopes(for: batch, bodyDigest: "d", receivedAt: UTCTimestamp(secondsSinceEpoch: 0)).first)
        let object = try #require(try JSONParser().parse(envelope.body).objectValue)
        // Every copy the sender sent is dropped; the bridge's own come last, once each.
        #expect(object.keys == ["action", "branch", "actor", "subject", "extra_msg", "event_id", "request_time", "received_at"])
        #expect(object["event_id"] == .string("d-0"))
    }

    @Test func seedsIncludeTheExamples() {
        #expect(Self.inputs("seeds").filter { !$0.hasPrefix("hostile-") }.count >= 3)
    }
}
