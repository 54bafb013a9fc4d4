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
import TutorCruncherSignature

/// End to end against the shared broker: what is POSTed is exactly what arrives.
@Suite struct BridgeIntegrationTests {
    func exchangeName() -> String { "it-\(UUID().uuidString.prefix(8))" }

    @Test func exactlyTheVerifiedEventsArriveWithRoutingKeysPropertiesAndBodies() async throws {
        let exchange = exchangeName()
        let probe = try await QueueProbe(exchange: exchange)
        defer { Task { await probe.stop() } }
        let examples = try Fixture.examples.map { try Fixture.bytes($0) }
        let batch = Webhooks.body(actions: ["RAISED_INVOICE", "CLIENT_PAID_INVOICE", "SOMETHING_NEW"], subjectID: 100)
        let empty = Array(#"{"request_time": 1700000000, "events": []}"#.utf8)
        let sentinel = Webhooks.body(actions: ["TEST_SENTINEL"])

        try await withLiveBridge(exchange: exchange) { port, _ in
            for body in examples + [batch, empty] {
                let response = try await postSigned(port: port, body: body)
                #expect(response.status == 200, "\(response.body)")
            }
            // Rejected requests must publish nothing.
            let forged = Webhooks.body(actions: ["FORGED"])
            #expect(try await httpRequest(port: port, headers: [.init("webhook-signature")!: Webhooks.sign(forged, key: "wrong")], body: forged).status == 403)
            #expect(try await httpRequest(port: port, body: forged).status == 403)
            #expect(try await httpRequest(port: port, headers: [.init("webhook-signature")!: "zz"], body: forged).status == 403)
            #expect(try await postSigned(port: port, body: sentinel).status == 200)
        }

        let received = try await probe.messages(before: "TEST_SENTINEL")
        #expect(received.map(\.routingKey) == [
            "CHANGED_CONTRACTOR_STATUS", "CHANGED_CONTRACTOR_STATUS", "CREATED_A_CONTRACTOR",
            "RAISED_INVOICE", "CLIENT_PAID_INVOICE", "SOMETHING_NEW",
        ])

        // Bodies: every original key unchanged, bridge keys present.
        let sources: [(body: [UInt8], index: Int)] = [(examples[0], 0), (examples[1], 0), (examples[2], 0), (batch, 0), (batch, 1), (batch, 2)]
        for (message, source) in zip(received, sources) {
            let envelope = try JSONParser().parse(message.body)
            let original = try #require(try JSONParser().parse(source.body)["events"]?.arrayValue?[source.index].objectValue)
            for member in original {
                #expect(envelope[member.key] == member.value, "\(message.routingKey): \(member.key)")
            }
            let eventID = "\(sha256Hex(source.body))-\(source.index)"
            #expect(envelope["event_id"] == .string(eventID))
            #expect(envelope["received_at"]?.stringValue.flatMap(UTCTimestamp.init(iso8601:)) != nil)
            #expect(message.properties.messageID == eventID)
            #expect(message.properties.type == message.routingKey)
            #expect(message.properties.contentType == "application/json")
            #expect(message.properties.persistent)
            #expect(message.properties.appID == "tc-bridge")
            #expect(message.properties.header(BridgeHeader.envelopeVersion) == .int(1))
            let timestamp = try #require(message.properties.timestamp)
            #expect(abs(timestamp - Int64(Date().timeIntervalSince1970)) < 600)
        }
        #expect(try JSONParser().parse(received[0].body)["request_time"] == .number("1583844113"))
        #expect(try JSONParser().parse(received[2].body)["request_time"] == .null)
        #expect(try JSONParser().parse(received[0].body)["branch"] == .null)

        // Headers: subject model and id, branch.
        #expect(received[0].properties.header(BridgeHeader.subjectModel) == .string("Tutor"))
        #expect(received[0].properties.header(BridgeHeader.subjectID) == .int(54))
        #expect(received[0].properties.header(BridgeHeader.branch) == nil)
        #expect(received[1].properties.header(BridgeHeader.branch) == .int(17597))
        #expect(received[4].properties.header(BridgeHeader.subjectModel) == .string("Client"))
        #expect(received[4].properties.header(BridgeHeader.subjectID) == .int(101))
        // Incoming HTTP headers are never copied.
        for message in received {
            #expect(message.properties.headers.allSatisfy { $0.0.hasPrefix("tc-") })
        }
    }

    @Test func unrecognisedBodiesArriveByteIdenticalWithTheirPath() async throws {
        let exchange = exchangeName()
        let probe = try await QueueProbe(exchange: exchange, bindingKeys: ["unrecognised", "TEST_SENTINEL"])
        defer { Task { await probe.stop() } }
        let profile = Array("{\n  \"id\": 54,\n  \"first_name\": \"Walt\\u00e9r\",\n  \"deleted\": false, \"request_time\": 1\n}".utf8)
        let garbage: [UInt8] = [0x00, 0xFF, 0xFE, 0x7B, 0x22]
        try await withLiveBridge(exchange: exchange) { port, _ in
            let status1 = try await postSigned(port: port, body: profile, path: "/webhook/tutor-profile").status
            #expect(status1 == 200)
            let status2 = try await postSigned(port: port, body: garbage, path: "/webhook").status
            #expect(status2 == 200)
            let status3 = try await postSigned(port: port, body: Webhooks.body(actions: ["TEST_SENTINEL"])).status
            #expect(status3 == 200)
        }
        let received = try await probe.messages(before: "TEST_SENTINEL")
        #expect(received.count == 2)
        #expect(received.map(\.body) == [profile, garbage])
        #expect(received.map { $0.properties.header(BridgeHeader.requestPath) } == [.string("/webhook/tutor-profile"), .string("/webhook")])
        #expect(received.allSatisfy { $0.routingKey == "unrecognised" && $0.properties.persistent })
    }

    @Test func oversizedUnknownPathAndWrongMethodPublishNothing() async throws {
        let exchange = exchangeName()
        let probe = try await QueueProbe(exchange: exchange)
        defer { Task { await probe.stop() } }
        try await withLiveBridge(exchange: exchange, maxBodyBytes: 4096) { port, _ in
            let big = Webhooks.body(actions: Array(repeating: "LOGIN", count: 40))
            #expect(big.count > 4096)
            let status4 = try await postSigned(port: port, body: big).status
            #expect(status4 == 413)
            let status5 = try await postSigned(port: port, body: Webhooks.body(actions: ["LOGIN"]), path: "/elsewhere").status
            #expect(status5 == 404)
            let status6 = try await httpRequest(port: port, method: .get, path: "/webhook").status
            #expect(status6 == 405)
            let status7 = try await httpRequest(port: port, method: .put, path: "/webhook/x", body: [1]).status
            #expect(status7 == 405)
            let status8 = try await postSigned(port: port, body: Webhooks.body(actions: ["TEST_SENTINEL"])).status
            #expect(status8 == 200)
        }
        #expect(try await probe.messages(before: "TEST_SENTINEL").isEmpty)
    }
}

/// Events no service has bound to yet are kept in the alternate exchange's queue.
@Suite struct UnroutableEventTests {
    @Test func unboundActionsLandInTheUnroutableQueueBoundOnesDoNot() async throws {
        let exchange = "unroutable-\(UUID().uuidString.prefix(8))"
        let bound = try await QueueProbe(exchange: exchange, bindingKeys: ["BOUND_ACTION"])
        defer { Task { await bound.stop() } }
        let unbound = Webhooks.body(actions: ["NOBODY_LISTENS"])
        let routed = Webhooks.body(actions: ["BOUND_ACTION"])
        try await withLiveBridge(exchange: exchange) { port, publisher in
            let kept = try await QueueProbe(existingQueue: "\(exchange).unroutable")
            defer { Task { await kept.stop() } }
            let first = try await postSigned(port: port, body: unbound)
            #expect(first.status == 200)
            let second = try await postSigned(port: port, body: routed)
            #expect(second.status == 200)
            let parked = try #require(try await kept.waitForMessages(count: 1).first)
            #expect(parked.routingKey == "NOBODY_LISTENS")
            #expect(parked.properties.messageID == "\(sha256Hex(unbound))-0")
            #expect(publisher.returnedMessageCount == 0, "the alternate exchange took it: nothing returned")
        }
        #expect(try await bound.waitForMessages(count: 1).map(\.routingKey) == ["BOUND_ACTION"])
    }
}
