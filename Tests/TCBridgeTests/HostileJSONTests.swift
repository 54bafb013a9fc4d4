import AMQPClient
import Foundation
import HTTPTypes
import Hummingbird
import HummingbirdTesting
import Logging
import NIOCore
import TCBridge
import TestSupport
import TCBridgeContract
import Testing
import TutorCruncher

/// Odd but validly signed bodies: each has a defined outcome (published as events, or as
/// `unrecognised`), is answered 200, and never crashes or hangs the bridge.
@Suite struct HostileJSONTests {
    /// What a body must become.
    enum Outcome: Sendable, CustomStringConvertible {
        /// Published as events with these routing keys.
        case events([String])
        /// Published once, raw, under `unrecognised`, with a reason starting with this text.
        case unrecognised(reasonPrefix: String)

        var description: String {
            switch self {
            case .events(let keys): "events \(keys)"
            case .unrecognised(let reason): "unrecognised (\(reason)…)"
            }
        }
    }

    struct Case: Sendable, CustomTestStringConvertible {
        let name: String
        let body: [UInt8]
        let outcome: Outcome
        var testDescription: String { name }
    }

    static let cases: [Case] = [
        Case(name: "deep nesting", body: Array(("{\"events\": [{\"action\": \"A\", \"x\": " + String(repeating: "[", count: 10_000) + String(repeating: "]", count: 10_000) + "}]}").utf8),
             outcome: .unrecognised(reasonPrefix: "not JSON: nesting deeper than")),
        Case(name: "huge numbers", body: Array(#"{"request_time": 1e999999, "events": [{"action": "A", "branch": 123456789012345678901234567890, "subject": {"model": "Client", "id": -1e400}}]}"#.utf8),
             outcome: .events(["A"])),
        Case(name: "duplicate keys", body: Array(#"{"events": [{"action": "A", "action": "B", "event_id": "x", "event_id": "y"}], "events": [{"action": "C", "received_at": 1}]}"#.utf8),
             outcome: .events(["C"])),
        Case(name: "invalid UTF-8", body: [0x7B, 0x22, 0x65, 0x22, 0x3A, 0x22, 0xC3, 0x28, 0x22, 0x7D], outcome: .unrecognised(reasonPrefix: "not JSON: invalid UTF-8")),
        Case(name: "lone surrogate escapes", body: Array(#"{"events": [{"action": "A", "extra_msg": "\ud800 and \udfff"}]}"#.utf8), outcome: .events(["A"])),
        Case(name: "escaped NUL", body: Array(#"{"events": [{"action": "A", "extra_msg": "nul\u0000here"}]}"#.utf8), outcome: .events(["A"])),
        Case(name: "raw NUL", body: Array("{\"events\": [{\"action\": \"A\"}]}\u{0}".utf8), outcome: .unrecognised(reasonPrefix: "not JSON")),
        Case(name: "byte order mark", body: [0xEF, 0xBB, 0xBF] + Array(#"{"events": [{"action": "A"}]}"#.utf8), outcome: .unrecognised(reasonPrefix: "not JSON")),
        Case(name: "trailing garbage", body: Array(#"{"events": [{"action": "A"}]} trailing"#.utf8), outcome: .unrecognised(reasonPrefix: "not JSON: unexpected data after")),
        Case(name: "events not an array", body: Array(#"{"events": {"action": "A"}}"#.utf8), outcome: .unrecognised(reasonPrefix: "\"events\" is not an array")),
        Case(name: "an event that is not an object", body: Array(#"{"events": [{"action": "A"}, 7]}"#.utf8), outcome: .unrecognised(reasonPrefix: "event 1 is not an object")),
        Case(name: "empty action", body: Array(#"{"events": [{"action": ""}]}"#.utf8), outcome: .unrecognised(reasonPrefix: "event 0 has no \"action\" string")),
        Case(name: "non-string action", body: Array(#"{"events": [{"action": 12}]}"#.utf8), outcome: .unrecognised(reasonPrefix: "event 0 has no \"action\" string")),
        Case(name: "a 10 MB string", body: Array(("{\"events\": [{\"action\": \"A\", \"extra_msg\": \"" + String(repeating: "x", count: 10_000_000) + "\"}]}").utf8),
             outcome: .events(["A"])),
        Case(name: "a 10 MB subject model", body: Array(("{\"events\": [{\"action\": \"A\", \"subject\": {\"model\": \"" + String(repeating: "m", count: 10_000_000) + "\"}}]}").utf8),
             outcome: .events(["unrecognised"])),
        Case(name: "a 256-byte action", body: Array(("{\"events\": [{\"action\": \"" + String(repeating: "A", count: 256) + "\"}]}").utf8),
             outcome: .events(["unrecognised"])),
        Case(name: "empty body", body: [], outcome: .unrecognised(reasonPrefix: "not JSON")),
    ]

    @Test(arguments: cases)
    func hasItsDefinedOutcome(_ hostile: Case) async throws {
        let publisher = RecordingPublisher()
        var logger = Logger(label: "hostile-json")
        logger.logLevel = .critical
        let app = buildApplication(
            configuration: BridgeConfiguration(maxBodyBytes: 32 << 20, verifier: Webhooks.verifier), publisher: publisher, logger: logger)
        try await app.test(.router) { client in
            let response = try await client.execute(
                uri: "/webhook", method: .post, headers: [HTTPField.Name("webhook-signature")!: Webhooks.sign(hostile.body)],
                body: ByteBuffer(bytes: hostile.body))
            #expect(response.status == .ok, "\(hostile.name): \(String(buffer: response.body))")
        }
        let messages = publisher.published
        switch hostile.outcome {
        case .events(let keys):
            #expect(messages.map(\.routingKey) == keys, "\(hostile.name)")
            for message in messages {
                #expect(message.encodingProblem() == nil)
                // Every envelope is JSON, and carries exactly one of each bridge key.
                let object = try #require(try JSONParser().parse(message.body).objectValue, "\(hostile.name)")
                for key in EventEnvelope.bridgeKeys {
                    #expect(object.members.filter { $0.key == key }.count == 1, "\(hostile.name): \(key)")
                }
            }
        case .unrecognised(let prefix):
            #expect(messages.count == 1, "\(hostile.name)")
            #expect(messages.first?.routingKey == "unrecognised")
            #expect(messages.first?.body == hostile.body, "published raw")
            guard case .string(let reason)? = messages.first?.properties.header(BridgeHeader.unrecognisedReason) else {
                Issue.record("\(hostile.name): no reason")
                return
            }
            #expect(reason.hasPrefix(prefix), "\(hostile.name): \(reason)")
        }
    }

    @Test func loneSurrogatesTravelExactlyAsSent() throws {
        let body = Array(#"{"events": [{"action": "A", "extra_msg": "\ud800 and \udfff", "n": 1.50}]}"#.utf8)
        guard case .events(let batch) = WebhookPayload.parse(body) else {
            Issue.record("not events")
            return
        }
        let envelope = try #require(EventEnvelope.envelopes(for: batch, bodyDigest: "d", receivedAt: .now()).first)
        let text = String(decoding: envelope.body, as: UTF8.self)
        #expect(text.hasPrefix(#"{"action": "A","extra_msg": "\ud800 and \udfff","n": 1.50,"branch":null"#))
    }

    @Test func duplicateActionUsesTheLastAsPythonDoes() throws {
        let body = Array(#"{"events": [{"action": "A", "action": "B"}]}"#.utf8)
        guard case .events(let batch) = WebhookPayload.parse(body) else {
            Issue.record("not events")
            return
        }
        #expect(EventEnvelope.envelopes(for: batch, bodyDigest: "d", receivedAt: .now()).map(\.action) == ["B"])
    }
}
