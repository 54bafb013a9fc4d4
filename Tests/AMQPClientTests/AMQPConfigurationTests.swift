@testable import AMQPClient
import Testing

@Suite struct AMQPConfigurationTests {
    @Test func parsesTheDefaultURL() throws {
        let configuration = try AMQPConnectionConfiguration(url: "amqp://guest:guest@127.0.0.1:5672/%2F")
        #expect(configuration.host == "127.0.0.1")
        #expect(configuration.port == 5672)
        #expect(configuration.virtualHost == "/")
        #expect(configuration.username == "guest")
        #expect(configuration.password == "guest")
        #expect(configuration.tls == nil)
    }

    @Test func amqpsDefaultsToPort5671WithVerification() throws {
        let configuration = try AMQPConnectionConfiguration(url: "amqps://user:p%40ss@broker.example:/prod")
        #expect(configuration.port == 5671)
        #expect(configuration.tls?.verifyPeer == true)
        #expect(configuration.tls?.verifyHostname == true)
        #expect(configuration.password == "p@ss")
        #expect(configuration.virtualHost == "prod")
    }

    @Test func missingPartsTakeDefaults() throws {
        let configuration = try AMQPConnectionConfiguration(url: "amqp://rabbit")
        #expect(configuration.host == "rabbit")
        #expect(configuration.port == 5672)
        #expect(configuration.virtualHost == "/")
        #expect(configuration.username == "guest")
    }

    @Test func ipv6Hosts() throws {
        let configuration = try AMQPConnectionConfiguration(url: "amqp://[::1]:5673/")
        #expect(configuration.host == "::1")
        #expect(configuration.port == 5673)
    }

    @Test(arguments: [
        "http://host", "amqp://host:99999", "amqp://host:abc", "amqp://host/%zz", "amqp://u:p%@host", "amqp://host?heartbeat=5",
        "amqp://[::1", "",
    ])
    func rejectsBadURLs(url: String) {
        #expect(throws: AMQPConfigurationError.self) { try AMQPConnectionConfiguration(url: url) }
    }

    @Test func passwordIsNeverShown() throws {
        let configuration = try AMQPConnectionConfiguration(url: "amqp://bridge:sup3rs3cret@rabbit:5672/%2F")
        #expect(!configuration.redactedURL.contains("sup3rs3cret"))
        #expect(!"\(configuration)".contains("sup3rs3cret"))
        #expect(configuration.redactedURL == "amqp://bridge:***@rabbit:5672/%2F")
    }

    @Test func errorsDoNotEchoThePassword() {
        do {
            _ = try AMQPConnectionConfiguration(url: "amqp://u:topsecret@host:notaport")
            Issue.record("should have thrown")
        } catch {
            #expect(!"\(error)".contains("topsecret"))
        }
    }
}

@Suite struct AMQPBackoffTests {
    @Test func delaysGrowAndAreCapped() {
        let backoff = AMQPBackoff(initial: .milliseconds(100), maximum: .seconds(2))
        for attempt in 0..<40 {
            let delay = backoff.delay(attempt: attempt)
            let cap = min(Duration.seconds(2), .milliseconds(100) * (1 << min(attempt, 20)))
            #expect(delay <= cap && delay >= cap / 2, "attempt \(attempt): \(delay)")
        }
    }

    @Test func aHeartbeatOutsideTheProtocolsRangeIsClampedNotTrappedOn() {
        #expect(AMQPConnection.heartbeatSeconds(.seconds(30)) == 30)
        #expect(AMQPConnection.heartbeatSeconds(.milliseconds(1_999)) == 1)
        #expect(AMQPConnection.heartbeatSeconds(.seconds(Int64(Int32.max) + 1)) == 65_535)
        #expect(AMQPConnection.heartbeatSeconds(.seconds(Int64.max)) == 65_535)
        #expect(AMQPConnection.heartbeatSeconds(.zero - .seconds(5)) == 0)
        #expect(AMQPConnection.heartbeatSeconds(.zero) == 0)
        #expect(AMQPConnection.heartbeatSeconds(.milliseconds(500)) == 1)
        #expect(AMQPConnection.heartbeatSeconds(.seconds(65_535)) == 65_535)
        #expect(AMQPConnection.heartbeatSeconds(.seconds(65_536)) == 65_535)
        #expect(AMQPConnection.heartbeatSeconds(Duration(attoseconds: .max)) == 65_535)
    }

    @Test func aPortOutsideOneTo65535IsRefusedBeforeRabbitMQCSeesIt() throws {
        #expect(try AMQPConnection.validatedPort(5672) == 5672)
        #expect(throws: AMQPError.self) { try AMQPConnection.validatedPort(0) }
        #expect(throws: AMQPError.self) { try AMQPConnection.validatedPort(70_000) }
        #expect(throws: AMQPError.self) { try AMQPConnection.validatedPort(.max) }
    }

    @Test func aHugeInitialBackoffIsCappedNotTrappedOn() {
        let backoff = AMQPBackoff(initial: .seconds(Int64.max), maximum: .seconds(5))
        for attempt in [0, 1, 5, 20, 100] {
            let delay = backoff.delay(attempt: attempt)
            #expect(delay <= .seconds(5) && delay >= .milliseconds(2_500), "attempt \(attempt): \(delay)")
        }
    }

    @Test func aTimeoutBecomesATimevalThatNeverTrapsOrGoesNegative() {
        #expect(AMQPConnection.timevalParts(.seconds(5) + .microseconds(250)) == (5, 250))
        #expect(AMQPConnection.timevalParts(.zero - .seconds(3)) == (0, 0))
        #expect(AMQPConnection.timevalParts(Duration(attoseconds: .max)) == (Int(Int64.max / 1_000_000), Int(Int64.max % 1_000_000)))
    }
}
