import AMQPClient
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

/// Router-level behaviour with a recording publisher: status codes, bodies, what gets published.
@Suite struct RouterTests {
    let publisher = RecordingPublisher()

    func app(maxBodyBytes: Int = 1 << 20, limits: ConnectionLimits = ConnectionLimits()) -> some ApplicationProtocol {
        var logger = Logger(label: "router-tests")
        logger.logLevel = .critical
        var configuration = BridgeConfiguration(maxBodyBytes: maxBodyBytes, verifier: Webhooks.verifier)
        configuration.limits = limits
        return buildApplication(configuration: configuration, publisher: publisher, logger: logger)
    }

    let signatureHeader = HTTPField.Name("webhook-signature")!

    func signedHeaders(_ body: [UInt8], name: String = "webhook-signature") -> HTTPFields {
        [HTTPField.Name(name)!: Webhooks.sign(body)]
    }

    @Test func signedBatchIsPublishedAndAnswered200() async throws {
        let body = Webhooks.body(actions: ["RAISED_INVOICE", "CLIENT_PAID_INVOICE"])
        try await app().test(.router) { client in
            let response = try await client.execute(uri: "/webhook", method: .post, headers: signedHeaders(body), body: ByteBuffer(bytes: body))
            #expect(response.status == .ok)
            #expect(String(buffer: response.body) == "{\"events\":2}\n")
            #expect(response.headers[.contentType] == "application/json")
        }
        #expect(publisher.published.map(\.routingKey) == ["RAISED_INVOICE", "CLIENT_PAID_INVOICE"])
    }

    @Test(arguments: ["webhook-signature", "Webhook-Signature", "WEBHOOK-SIGNATURE"])
    func headerNameIsCaseInsensitive(name: String) async throws {
        let body = Webhooks.body(actions: ["LOGIN"])
        try await app().test(.router) { client in
            let response = try await client.execute(uri: "/webhook", method: .post, headers: signedHeaders(body, name: name), body: ByteBuffer(bytes: body))
            #expect(response.status == .ok)
        }
        #expect(publisher.published.count == 1)
    }

    @Test func missingSignatureIs403AndPublishesNothing() async throws {
        let body = Webhooks.body(actions: ["LOGIN"])
        try await app().test(.router) { client in
            let response = try await client.execute(uri: "/webhook", method: .post, body: ByteBuffer(bytes: body))
            #expect(response.status == .forbidden)
            #expect(String(buffer: response.body) == "{\"error\":\"missing webhook-signature header\"}\n")
        }
        #expect(publisher.published.isEmpty)
    }

    @Test func malformedSignatureIs403() async throws {
        let body = Webhooks.body(actions: ["LOGIN"])
        try await app().test(.router) { client in
            let response = try await client.execute(
                uri: "/webhook", method: .post, headers: [signatureHeader: "not-hex"], body: ByteBuffer(bytes: body))
            #expect(response.status == .forbidden)
            #expect(String(buffer: response.body).contains("malformed"))
        }
        #expect(publisher.published.isEmpty)
    }

    /// Two `webhook-signature` fields read as one malformed value, even when one is valid: the
    /// router never picks one of them.
    @Test func aSignatureSentTwiceIsMalformedEvenWhenOneIsValid() async throws {
        let body = Webhooks.body(actions: ["LOGIN"])
        let headers = HTTPFields(Array(repeating: HTTPField(name: signatureHeader, value: Webhooks.sign(body)), count: 2))
        try await app().test(.router) { client in
            let response = try await client.execute(uri: "/webhook", method: .post, headers: headers, body: ByteBuffer(bytes: body))
            #expect(response.status == .forbidden)
            #expect(String(buffer: response.body) == "{\"error\":\"malformed webhook-signature header\"}\n")
        }
        #expect(publisher.published.isEmpty)
    }

    @Test func wrongSignatureIs403() async throws {
        let body = Webhooks.body(actions: ["LOGIN"])
        try await app().test(.router) { client in
            let wrong = Webhooks.sign(body, key: "some-other-key")
            let response = try await client.execute(uri: "/webhook", method: .post, headers: [signatureHeader: wrong], body: ByteBuffer(bytes: body))
            #expect(response.status == .forbidden)
            #expect(String(buffer: response.body) == "{\"error\":\"invalid webhook-signature\"}\n")
        }
        #expect(publisher.published.isEmpty)
    }

    @Test func signatureOfAnotherBodyIs403() async throws {
        let body = Webhooks.body(actions: ["LOGIN"])
        let tampered = body.dropLast(2) + Array("  ".utf8)
        try await app().test(.router) { client in
            let response = try await client.execute(uri: "/webhook", method: .post, headers: signedHeaders(body), body: ByteBuffer(bytes: tampered))
            #expect(response.status == .forbidden)
        }
        #expect(publisher.published.isEmpty)
    }

    @Test func verifiedNonEventBodyOnASubPathIsPublishedRawAsUnrecognised() async throws {
        let body = Array(#"{"id": 54, "branch_id": 3, "first_name": "Walter", "deleted": false, "request_time": 1583844113}"#.utf8)
        try await app().test(.router) { client in
            let response = try await client.execute(uri: "/webhook/public-profile", method: .post, headers: signedHeaders(body), body: ByteBuffer(bytes: body))
            #expect(response.status == .ok)
            #expect(String(buffer: response.body) == "{\"events\":0,\"unrecognised\":true}\n")
        }
        let message = try #require(publisher.published.first)
        #expect(publisher.published.count == 1)
        #expect(message.routingKey == "unrecognised")
        #expect(message.body == body)
        #expect(message.properties.header(BridgeHeader.requestPath) == .string("/webhook/public-profile"))
        #expect(message.properties.messageID == "\(sha256Hex(body))-raw")
        #expect(message.properties.contentType == "application/json")
    }

    @Test func verifiedNonJSONBodyIsPublishedRawNot4xx() async throws {
        let body: [UInt8] = Array("this is not json \u{00}\u{ff}".utf8)
        try await app().test(.router) { client in
            let response = try await client.execute(uri: "/webhook", method: .post, headers: signedHeaders(body), body: ByteBuffer(bytes: body))
            #expect(response.status == .ok)
        }
        #expect(publisher.published.first?.body == body)
        #expect(publisher.published.first?.properties.contentType == "application/octet-stream")
    }

    @Test func brokerFailureIs503() async throws {
        publisher.failNextPublishes(with: AMQPError(.notConnected, "down"))
        let body = Webhooks.body(actions: ["LOGIN"])
        try await app().test(.router) { client in
            let response = try await client.execute(uri: "/webhook", method: .post, headers: signedHeaders(body), body: ByteBuffer(bytes: body))
            #expect(response.status == .serviceUnavailable)
            #expect(String(buffer: response.body) == "{\"error\":\"broker unavailable, retry later\"}\n")
        }
    }

    @Test(arguments: [HTTPRequest.Method.get, .put, .delete, .patch])
    func otherMethodsOnWebhookAre405(method: HTTPRequest.Method) async throws {
        try await app().test(.router) { client in
            for path in ["/webhook", "/webhook/sub/path"] {
                let response = try await client.execute(uri: path, method: method)
                #expect(response.status == .methodNotAllowed, "\(method) \(path)")
                #expect(response.headers[.allow] == "POST")
            }
        }
    }

    @Test func unknownPathsAre404() async throws {
        try await app().test(.router) { client in
            for (path, method) in [("/", HTTPRequest.Method.get), ("/webhooks", .post), ("/health/x", .get)] {
                let response = try await client.execute(uri: path, method: method)
                #expect(response.status == .notFound, "\(method) \(path)")
            }
        }
    }

    @Test func oversizedBodyIs413AndPublishesNothing() async throws {
        let body = [UInt8](repeating: UInt8(ascii: "a"), count: 2048)
        try await app(maxBodyBytes: 1024).test(.live) { client in
            let response = try await client.execute(uri: "/webhook", method: .post, headers: signedHeaders(body), body: ByteBuffer(bytes: body))
            #expect(response.status == .contentTooLarge)
            #expect(String(buffer: response.body).contains("larger than 1024 bytes"))
        }
        #expect(publisher.published.isEmpty)
    }

    @Test func largeBodiesUpToTheLimitAreAccepted() async throws {
        // TutorCruncher documents no size limit and subjects embed whole arrays: well past
        // Hummingbird's 2 MiB default upload size.
        let filler = String(repeating: "x", count: 3 * 1024 * 1024)
        let body = Array(#"{"events": [{"action": "BIG", "subject": {"model": "Tutor", "id": 1, "bio": "\#(filler)"}}]}"#.utf8)
        // Not a test of the connection guard's deadlines: a test run starting hundreds of tests on two
        // cores once kept this 3 MiB upload on loopback past the 10 s body deadline.
        let patient = ConnectionLimits(headerTimeout: .seconds(120), bodyTimeout: .seconds(120), idleTimeout: .seconds(120))
        try await app(maxBodyBytes: 16 * 1024 * 1024, limits: patient).test(.live) { client in
            let response = try await client.execute(uri: "/webhook", method: .post, headers: signedHeaders(body), body: ByteBuffer(bytes: body))
            #expect(response.status == .ok)
        }
        #expect(publisher.published.first?.body.count ?? 0 > 3 * 1024 * 1024)
    }

    @Test func healthFollowsThePublisherState() async throws {
        try await app().test(.router) { client in
            let up = try await client.execute(uri: "/health", method: .get)
            #expect(up.status == .ok)
            #expect(String(buffer: up.body) == "{\"broker\":\"connected\",\"status\":\"ok\"}\n")
            publisher.set(state: .disconnected(reason: "refused"))
            let down = try await client.execute(uri: "/health", method: .get)
            #expect(down.status == .serviceUnavailable)
            #expect(String(buffer: down.body) == "{\"broker\":\"disconnected\",\"status\":\"unavailable\"}\n")
        }
    }

    @Test func responsesNeverContainTheKeyOrThePayload() async throws {
        let body = Webhooks.body(actions: ["LOGIN"], marker: "payload-marker-123")
        try await app().test(.router) { client in
            for headers in [signedHeaders(body), [signatureHeader: String(repeating: "0", count: 64)]] {
                let response = try await client.execute(uri: "/webhook", method: .post, headers: headers, body: ByteBuffer(bytes: body))
                let text = String(buffer: response.body)
                #expect(!text.contains(Webhooks.testKey))
                #expect(!text.contains("payload-marker-123"))
                #expect(text.utf8.count < 100)
            }
        }
    }
}
