import AMQPClient
import Dispatch
import Foundation
import HTTPTypes
import Hummingbird
import HummingbirdTesting
import Logging
import NIOCore
import Synchronization
@testable import TCBridge
import TestSupport
import Testing
import TutorCruncher

// The replay window: the request_time scan, the window itself, and its place in the router.

@Suite struct RequestTimeScanTests {
    func scan(_ text: String) -> RequestTime { RequestTime.scan(Array(text.utf8)) }

    @Test func readsEitherSpellingAndPrefersTheCurrentOne() {
        #expect(scan(#"{"request_time": 1700000000, "events": []}"#) == .seconds(1_700_000_000))
        #expect(scan(#"{"_request_time": 5, "events": []}"#) == .seconds(5))
        #expect(scan(#"{"_request_time": 1, "request_time": 2}"#) == .seconds(2))
        #expect(scan(#"{"request_time": 2, "_request_time": 1}"#) == .seconds(2))
        // As WebhookPayload does: a present request_time wins even when it is not a number.
        #expect(scan(#"{"request_time": null, "_request_time": 5}"#) == .notANumber)
    }

    @Test func theLastOfDuplicateKeysWinsAsInPython() {
        #expect(scan(#"{"request_time": 1, "events": [], "request_time": 2}"#) == .seconds(2))
    }

    @Test func onlyTheRootObjectCounts() {
        #expect(scan(#"{"events": [{"request_time": 5}], "subject": {"_request_time": 6}}"#) == .absent)
        #expect(scan(#"{"x": "\"request_time\": 5", "y": "\\"}"#) == .absent)
        #expect(scan(#"[{"request_time": 5}]"#) == .absent)
        #expect(scan(#"{"events": []}"#) == .absent)
        #expect(scan("") == .absent)
    }

    @Test func nonNumbersAreNotUsableTimes() {
        for value in [#""1700000000""#, "true", "null", "{}", "[1700000000]"] {
            #expect(scan(#"{"request_time": \#(value), "events": []}"#) == .notANumber, "\(value)")
        }
    }

    @Test func numbersOfEveryShapeParseWithoutOverflow() {
        #expect(scan(#"{"request_time": 1700000000.75}"#) == .seconds(1_700_000_000.75))
        #expect(scan(#"{"request_time": -5}"#) == .seconds(-5))
        #expect(scan(#"{"request_time": 17e8}"#) == .seconds(1_700_000_000))
        #expect(scan(#"{"request_time": 1e400}"#) == .seconds(.infinity))
        #expect(scan(#"{"request_time": -1e400}"#) == .seconds(-.infinity))
        #expect(scan(#"{"request_time": 123456789012345678901234567890123456789}"#) == .seconds(1.2345678901234568e38))
    }

    @Test func escapedKeysWhitespaceAndAByteOrderMark() {
        #expect(scan(#"{"request\u005ftime": 7}"#) == .seconds(7))
        #expect(scan("\u{FEFF}{\n  \"_request_time\" :\t8 ,\n  \"events\": []\n}\n") == .seconds(8))
    }

    @Test func agreesWithThePayloadParserOnTheExamples() throws {
        for name in Fixture.examples {
            let body = try Fixture.bytes(name)
            guard case .events(let batch) = WebhookPayload.parse(body) else {
                Issue.record("\(name) did not parse")
                continue
            }
            let expected: RequestTime =
                switch batch.requestTime {
                case .null: .absent
                case .number(let text): .seconds(Double(text) ?? .nan)
                default: .notANumber
                }
            #expect(RequestTime.scan(body) == expected, "\(name)")
        }
    }

    /// The bridge reads the time of an event batch from its one scan (`RequestTime(scanned:)`) and
    /// keeps the root scan for other bodies: on every event batch the two must agree.
    @Test func theEventScanReadsTheSameTimeAsTheRootScan() throws {
        let keys = [#""request_time""#, #""_request_time""#, #""request\u005ftime""#, #""other""#]
        let values = [
            "1700000000", "-1.5e3", "1e999", "-1e999", "0", "null", "true", #""1700000000""#, "[1]", #"{"request_time":1}"#, "1.0E+2",
        ]
        var generator = SplitMix64(seed: 11)
        var bodies = try Fixture.examples.map { try Fixture.bytes($0) }
        for _ in 0..<2000 {
            var members = [#""events":[{"action":"a"}]"#]
            for _ in 0..<Int(generator.next() % 4) {
                members.append("\(keys[Int(generator.next() % UInt64(keys.count))]):\(values[Int(generator.next() % UInt64(values.count))])")
            }
            members.shuffle(using: &generator)
            bodies.append(Array("{\(members.joined(separator: ","))}".utf8))
        }
        var compared = 0
        for body in bodies {
            guard case .events(let batch) = WebhookPayload.scan(body) else { continue }
            compared += 1
            #expect(RequestTime(scanned: batch) == RequestTime.scan(body), "\(String(decoding: body.prefix(200), as: UTF8.self))")
        }
        #expect(compared == bodies.count)
    }

    @Test func anyBytesGiveAnAnswer() {
        let body = Array(#"{"request_time": 1700000000, "a": {"b": ["c\"]", {"d": -1.5e3}]}, "_request_time": 9, "e": "\u00e9"}"#.utf8)
        for end in 0...body.count { _ = RequestTime.scan(Array(body[0..<end])) }
        // Truncated after the value: the value read so far is used.
        #expect(scan(#"{"request_time": 5"#) == .seconds(5))
        #expect(scan(#"{"request_time": -"#) == .absent)
        #expect(scan(#"{"request_time": 5."#) == .absent)
        var generator = SplitMix64(seed: 7)
        let alphabet = Array(#"{}[]":,\ -.0123456789eE_request_timenul"#.utf8) + [0x00, 0xFF, 0xC3]
        for _ in 0..<3000 {
            let length = Int(generator.next() % 64)
            let bytes = (0..<length).map { _ in alphabet[Int(generator.next() % UInt64(alphabet.count))] }
            _ = RequestTime.scan(Array(#"{"request_time""#.utf8) + bytes)
            _ = RequestTime.scan(bytes)
        }
    }

    @Test func deepNestingDoesNotRecurse() {
        let depth = 200_000
        let body = "{\"a\": " + String(repeating: "[", count: depth) + String(repeating: "]", count: depth) + ", \"request_time\": 3}"
        #expect(scan(body) == .seconds(3))
    }
}

@Suite struct ReplayWindowTests {
    let window = ReplayWindow(maxAge: 3600, maxFutureSkew: 300)
    let now = 1_800_000_000.0

    @Test func boundsAreInclusive() {
        #expect(window.check(.seconds(now - 3600), now: now) == .fresh(age: 3600))
        #expect(window.check(.seconds(now - 3601), now: now) == .tooOld(age: 3601))
        #expect(window.check(.seconds(now + 300), now: now) == .fresh(age: -300))
        #expect(window.check(.seconds(now + 301), now: now) == .inFuture(ahead: 301))
        #expect(window.check(.seconds(now), now: now).accepted)
    }

    @Test func absurdTimesAreRefusedAndMissingOnesLetThrough() {
        #expect(window.check(.seconds(.infinity), now: now) == .inFuture(ahead: .infinity))
        #expect(window.check(.seconds(-.infinity), now: now) == .tooOld(age: .infinity))
        #expect(window.check(.seconds(-5), now: now).accepted == false)
        #expect(window.check(.seconds(.nan), now: now) == .notANumber)
        #expect(window.check(.absent, now: now) == .absent)
        #expect(window.check(.absent, now: now).accepted)
        #expect(window.check(.notANumber, now: now).accepted)
    }

    @Test func theSendersLastRetryIsInside() {
        // Retries after 1, 10, 100 and 1000 s reuse the original request_time.
        #expect(window.check(.seconds(now - 1111 - 8 * 5), now: now).accepted)
        #expect(window.span == 3900)
    }
}

/// The replay window at router level: refused bodies get 403 and publish nothing.
@Suite struct ReplayRouterTests {
    let publisher = RecordingPublisher()
    var now: Int { Int(Date().timeIntervalSince1970) }

    func app() -> some ApplicationProtocol {
        var logger = Logger(label: "router-tests")
        logger.logLevel = .critical
        var configuration = BridgeConfiguration(verifier: Webhooks.verifier, dedupWindow: .seconds(3900))
        configuration.replayWindow = ReplayWindow(maxAge: 3600, maxFutureSkew: 300)
        return buildApplication(configuration: configuration, publisher: publisher, logger: logger)
    }

    func post(_ client: some TestClientProtocol, _ body: [UInt8]) async throws -> (status: Int, body: String) {
        let response = try await client.execute(
            uri: "/webhook", method: .post, headers: [HTTPField.Name("webhook-signature")!: Webhooks.sign(body)], body: ByteBuffer(bytes: body))
        return (Int(response.status.code), String(buffer: response.body))
    }

    func legacyBody(_ time: String) -> [UInt8] {
        Array(#"{"_request_time": \#(time), "events": [{"action": "LEGACY", "verb": "x", "subject": {"model": "Client", "id": 1}}]}"#.utf8)
    }

    @Test func anOldBodyIs403AndPublishesNothing() async throws {
        try await app().test(.router) { client async throws in
            let response = try await post(client, Webhooks.body(actions: ["REPLAYED"], requestTime: now - 7200))
            #expect(response.status == 403)
            #expect(response.body == "{\"error\":\"request_time too old\"}\n")
        }
        #expect(publisher.published.isEmpty)
    }

    @Test func aRefusalIsLoggedWithTheBodysDigestNeverItsBytes() async throws {
        let log = CapturedLog()
        var configuration = BridgeConfiguration(verifier: Webhooks.verifier, dedupWindow: .seconds(3900))
        configuration.replayWindow = ReplayWindow(maxAge: 3600, maxFutureSkew: 300)
        let app = buildApplication(configuration: configuration, publisher: publisher, logger: log.logger(level: .notice))
        let old = Webhooks.body(actions: ["REPLAYED"], requestTime: now - 7200)
        let future = Webhooks.body(actions: ["FUTURE"], requestTime: now + 3600)
        try await app.test(.router) { client async throws in
            #expect(try await post(client, old).status == 403)
            #expect(try await post(client, future).status == 403)
        }
        let refusals = log.all.filter { $0.contains("rejected webhook: request_time") }
        #expect(refusals.count == 2, "\(log.all)")
        #expect(refusals.first?.contains(#""body_sha256": \#(sha256HexForTests(old))"#) == true, "\(refusals)")
        #expect(refusals.last?.contains(#""body_sha256": \#(sha256HexForTests(future))"#) == true, "\(refusals)")
        #expect(!refusals.contains { $0.contains("REPLAYED") || $0.contains("FUTURE") }, "no payload in the log")
    }

    @Test func aFutureBodyIs403() async throws {
        try await app().test(.router) { client async throws in
            let response = try await post(client, Webhooks.body(actions: ["FUTURE"], requestTime: now + 3600))
            #expect(response.status == 403)
            #expect(response.body == "{\"error\":\"request_time in the future\"}\n")
            #expect(try await post(client, Webhooks.body(actions: ["NO_TIME"], requestTime: nil)).status == 200)
        }
        #expect(publisher.published.map(\.routingKey) == ["NO_TIME"])
    }

    @Test func freshBodiesAndTheSendersRetriesAre200() async throws {
        try await app().test(.router) { client async throws in
            #expect(try await post(client, Webhooks.body(actions: ["NOW"], requestTime: now)).status == 200)
            #expect(try await post(client, Webhooks.body(actions: ["LAST_RETRY"], requestTime: now - 1111 - 40)).status == 200)
            #expect(try await post(client, Webhooks.body(actions: ["SKEWED"], requestTime: now + 200)).status == 200)
        }
        #expect(publisher.published.map(\.routingKey) == ["NOW", "LAST_RETRY", "SKEWED"])
    }

    @Test func aBodyWithoutATimeIsAccepted() async throws {
        try await app().test(.router) { client async throws in
            let response = try await post(client, Webhooks.body(actions: ["NO_TIME"], requestTime: nil))
            #expect(response.status == 200)
            #expect(response.body == "{\"events\":1}\n")
            let stringTime = Array(#"{"request_time": "soon", "events": [{"action": "STRING_TIME"}]}"#.utf8)
            #expect(try await post(client, stringTime).status == 200)
        }
        #expect(publisher.published.count == 2)
    }

    @Test func theOlderSpellingIsHonoured() async throws {
        try await app().test(.router) { client async throws in
            #expect(try await post(client, legacyBody(String(now - 7200))).status == 403)
            #expect(try await post(client, legacyBody(String(now + 3600))).status == 403)
            #expect(try await post(client, legacyBody(String(now))).status == 200)
        }
        #expect(publisher.published.map(\.routingKey) == ["LEGACY"])
    }

    @Test func absurdNumbersAre403NotACrash() async throws {
        try await app().test(.router) { client async throws in
            for time in ["1e400", "-1e400", "99999999999999999999999999", "-5", "0"] {
                #expect(try await post(client, legacyBody(time)).status == 403, "\(time)")
            }
        }
        #expect(publisher.published.isEmpty)
    }

    @Test func aReplayOfAnAcceptedBodyLaterIsStillADuplicateNotAPublish() async throws {
        let body = Webhooks.body(actions: ["ONCE"], requestTime: now - 3000)
        try await app().test(.router) { client async throws in
            #expect(try await post(client, body).body == "{\"events\":1}\n")
            #expect(try await post(client, body).body == "{\"duplicate\":true}\n")
        }
        #expect(publisher.published.count == 1)
    }

    @Test func anUnsignedOldBodyIsStillASignatureFailure() async throws {
        let body = Webhooks.body(actions: ["OLD"], requestTime: 1)
        try await app().test(.router) { client async throws in
            let response = try await client.execute(
                uri: "/webhook", method: .post, headers: [HTTPField.Name("webhook-signature")!: String(repeating: "0", count: 64)],
                body: ByteBuffer(bytes: body))
            #expect(response.status == .forbidden)
            #expect(String(buffer: response.body) == "{\"error\":\"invalid webhook-signature\"}\n")
        }
    }
}
