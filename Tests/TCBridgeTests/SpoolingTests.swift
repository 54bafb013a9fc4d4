import AMQPClient
import DurableSpool
import Foundation
import HTTPTypes
import Hummingbird
import HummingbirdTesting
import Logging
import NIOCore
@testable import TCBridge
import TestSupport
import Testing
import TutorCruncher
import TutorCruncherSignature

/// Router-level: what happens when the broker cannot confirm and a spool is configured.
@Suite struct SpoolingRouterTests {
    let publisher = RecordingPublisher()
    let directory = NSTemporaryDirectory() + "spool-router-\(UUID().uuidString)"

    func spool(maxBytes: Int64 = 1 << 20) -> DurableSpool {
        var logger = Logger(label: "spool")
        logger.logLevel = .critical
        return DurableSpool(configuration: .init(directory: directory, maxBytes: maxBytes), logger: logger)
    }

    func app(spool: DurableSpool, dedupWindow: Duration? = nil) -> some ApplicationProtocol {
        var logger = Logger(label: "router-tests")
        logger.logLevel = .critical
        return buildApplication(
            configuration: BridgeConfiguration(verifier: Webhooks.verifier, dedupWindow: dedupWindow),
            publisher: publisher, spool: spool, logger: logger)
    }

    func post(_ client: some TestClientProtocol, _ body: [UInt8]) async throws -> TestResponse {
        try await client.execute(
            uri: "/webhook", method: .post, headers: [HTTPField.Name("webhook-signature")!: Webhooks.sign(body)], body: ByteBuffer(bytes: body))
    }

    @Test(arguments: [AMQPError.Kind.notConnected, .blocked, .nacked, .confirmTimeout, .connectionLost])
    func brokerFailureSpoolsDurablyAndAnswers200(kind: AMQPError.Kind) async throws {
        publisher.failNextPublishes(with: AMQPError(kind, "test"))
        let spool = spool()
        let body = Webhooks.body(actions: ["RAISED_INVOICE", "CLIENT_PAID_INVOICE"])
        try await app(spool: spool).test(.router) { client in
            let response = try await post(client, body)
            #expect(response.status == .ok)
            #expect(String(buffer: response.body) == "{\"events\":2,\"spooled\":true}\n")
        }
        let records = await spool.lease(maxRecords: 10)
        #expect(records.count == 1)
        let messages = try SpooledMessages.decode(try #require(records.first).payload)
        #expect(messages.map(\.routingKey) == ["RAISED_INVOICE", "CLIENT_PAID_INVOICE"])
        #expect(messages.map(\.properties.messageID) == ["\(sha256Hex(body))-0", "\(sha256Hex(body))-1"])
    }

    @Test func fullSpoolAnswers503() async throws {
        publisher.failNextPublishes(with: AMQPError(.notConnected, "down"))
        let spool = spool(maxBytes: 100)
        try await app(spool: spool).test(.router) { client in
            let response = try await post(client, Webhooks.body(actions: ["LOGIN"]))
            #expect(response.status == .serviceUnavailable)
            #expect(String(buffer: response.body) == "{\"error\":\"temporarily unable to accept events, retry later\"}\n")
            let ready = try await client.execute(uri: "/ready", method: .get)
            #expect(ready.status == .ok, "an empty spool that is too small is still 'ready' by size; the append decides")
        }
        #expect(spool.depth.records == 0)
    }

    @Test func unwritableSpoolAnswers503AndIsNotReady() async throws {
        publisher.failNextPublishes(with: AMQPError(.notConnected, "down"))
        publisher.set(state: .disconnected(reason: "down"))
        var logger = Logger(label: "spool")
        logger.logLevel = .critical
        let spool = DurableSpool(configuration: .init(directory: "/dev/null/spool"), logger: logger)
        try await app(spool: spool).test(.router) { client in
            let response = try await post(client, Webhooks.body(actions: ["LOGIN"]))
            #expect(response.status == .serviceUnavailable)
            let ready = try await client.execute(uri: "/ready", method: .get)
            #expect(ready.status == .serviceUnavailable)
            #expect(String(buffer: ready.body) == "{\"ready\":false,\"broker\":false,\"spool\":false}\n")
        }
    }

    @Test func readyWhileTheSpoolCanTakeEventsAndHealthShowsItsDepth() async throws {
        publisher.failNextPublishes(with: AMQPError(.notConnected, "down"))
        publisher.set(state: .disconnected(reason: "down"))
        let spool = spool()
        try await app(spool: spool).test(.router) { client in
            _ = try await post(client, Webhooks.body(actions: ["LOGIN"]))
            let ready = try await client.execute(uri: "/ready", method: .get)
            #expect(ready.status == .ok)
            #expect(String(buffer: ready.body) == "{\"ready\":true,\"broker\":false,\"spool\":true}\n")
            let health = try await client.execute(uri: "/health", method: .get)
            #expect(health.status == .serviceUnavailable)
            let depth = spool.depth
            #expect(String(buffer: health.body) == "{\"broker\":\"disconnected\",\"status\":\"unavailable\",\"spool\":{\"records\":1,\"bytes\":\(depth.bytes)}}\n")
        }
    }

    @Test func identicalBodyWithinTheWindowIsAnsweredWithoutPublishing() async throws {
        let spool = spool()
        let body = Webhooks.body(actions: ["LOGIN"])
        try await app(spool: spool, dedupWindow: .seconds(60)).test(.router) { client in
            #expect(try await post(client, body).status == .ok)
            let again = try await post(client, body)
            #expect(again.status == .ok)
            #expect(String(buffer: again.body) == "{\"duplicate\":true}\n")
        }
        #expect(publisher.published.count == 1)
    }

    @Test func aRefusedBodyIsNotRememberedAsADuplicate() async throws {
        publisher.failNextPublishes(with: AMQPError(.notConnected, "down"))
        let spool = spool(maxBytes: 10)
        let body = Webhooks.body(actions: ["LOGIN"])
        try await app(spool: spool, dedupWindow: .seconds(60)).test(.router) { client in
            #expect(try await post(client, body).status == .serviceUnavailable)
            publisher.failNextPublishes(with: nil)
            let retry = try await post(client, body)
            #expect(retry.status == .ok)
            #expect(String(buffer: retry.body) == "{\"events\":1}\n")
        }
        #expect(publisher.published.count == 1)
    }
}

@Suite struct SpooledMessagesTests {
    @Test func roundTripsEveryField() throws {
        let messages = [
            AMQPOutboundMessage(
                exchange: "tutorcruncher", routingKey: "RAISED_INVOICE",
                properties: AMQPProperties(
                    contentType: "application/json", persistent: true, messageID: "abc-0", type: "RAISED_INVOICE", timestamp: -5,
                    appID: "tc-bridge", headers: [("s", .string("é")), ("i", .int(Int64.min)), ("b", .bool(true))]),
                body: Array("{\"x\":1}".utf8), mandatory: true),
            AMQPOutboundMessage(exchange: "", routingKey: "q", properties: AMQPProperties(persistent: false), body: []),
        ]
        let decoded = try SpooledMessages.decode(SpooledMessages.encode(messages))
        #expect(decoded.count == 2)
        for (a, b) in zip(decoded, messages) {
            #expect(a.exchange == b.exchange && a.routingKey == b.routingKey && a.body == b.body && a.mandatory == b.mandatory)
            #expect(a.properties == b.properties)
        }
    }

    @Test func rejectsDamage() {
        let encoded = SpooledMessages.encode([AMQPOutboundMessage(exchange: "e", routingKey: "k", properties: AMQPProperties(), body: [1, 2, 3])])
        #expect(throws: SpooledMessages.DecodingError.self) { try SpooledMessages.decode(Array(encoded.dropLast())) }
        #expect(throws: SpooledMessages.DecodingError.self) { try SpooledMessages.decode([2] + encoded.dropFirst()) }
        #expect(throws: SpooledMessages.DecodingError.self) { try SpooledMessages.decode(encoded + [0]) }
    }
}

@Suite struct DedupWindowTests {
    /// A wall clock the test moves by hand (milliseconds since the epoch).
    final class FakeClock: Sendable {
        let now = Mutex<Int64>(1_764_000_000_000)
        func advance(_ duration: Duration) { now.withLock { $0 += duration.components.seconds * 1000 } }
        var read: DedupWindow.Clock { { self.now.withLock { $0 } } }
    }

    static func digest(_ name: String) -> BodyDigest { BodyDigest(hex: sha256Hex(Array(name.utf8)))! }

    @Test func remembersForTheWindowThenForgets() async {
        let clock = FakeClock()
        let window = DedupWindow(window: .seconds(3600), now: clock.read)
        let a = Self.digest("a")
        #expect(await window.claim(a) == .new)
        await window.complete(a, accepted: true)
        #expect(await window.claim(a) == .duplicate)
        clock.advance(.seconds(3599))
        #expect(await window.claim(a) == .duplicate)
        clock.advance(.seconds(2))
        #expect(await window.claim(a) == .new)
    }

    @Test func memoryIsBounded() async {
        let window = DedupWindow(window: .seconds(3600), maxEntries: 3)
        for name in ["a", "b", "c", "d"] {
            _ = await window.claim(Self.digest(name))
            await window.complete(Self.digest(name), accepted: true)
        }
        #expect(window.count == 3)
        #expect(await window.claim(Self.digest("a")) == .new)
    }

    @Test func aConcurrentIdenticalRequestWaitsForTheFirstOutcome() async {
        let window = DedupWindow(window: .seconds(60))
        let x = Self.digest("x")
        #expect(await window.claim(x) == .new)
        let second = Task { await window.claim(x) }
        try? await waitUntil("second request waiting") { window.waitingCount(x) == 1 }
        await window.complete(x, accepted: false)  // the first failed: the second must handle it
        #expect(await second.value == .new)
        await window.complete(x, accepted: true)
        #expect(await window.claim(x) == .duplicate)
    }
}

import Synchronization
