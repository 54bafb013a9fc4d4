@_spi(Testing) import AMQPClient
import Foundation
import TestSupport
import Testing

/// `amqps://` against real brokers with TLS listeners, using certificates made by
/// `scripts/make-test-certs`: one node verifies no client (`tls`), one requires a client
/// certificate signed by the test CA (`tls-mutual`). Both are started around the suite and stopped after it.
@Suite(.tlsBrokers) struct TLSTests {
    @Test func rightCAConnectsAndPublishesAPersistentConfirmedMessage() async throws {
        let node = try TLSBrokers.serverOnly
        try await expectPublishes(over: try node.tlsConnection(), to: node)
    }

    @Test func wrongCAFailsWithAPeerVerificationMessage() async throws {
        let node = try TLSBrokers.serverOnly
        var connection = try node.tlsConnection()
        connection.tls?.caCertificatePath = try TLSBrokers.certificates.wrongCA
        let error = await #expect(throws: AMQPError.self) { try await AMQPAdmin(connection: connection).declare() }
        #expect(error?.kind == .connectionFailed)
        #expect(error?.message.contains("broker certificate not trusted") == true, "\(String(describing: error))")
        #expect(error?.message.contains("peer certificate verification failed") == true)
        #expect(error?.message.contains("wrong-ca.pem") == true)
    }

    @Test func publisherShowsTheUntrustedCertificateAsItsDisconnectReason() async throws {
        var connection = try TLSBrokers.serverOnly.tlsConnection()
        connection.tls?.caCertificatePath = try TLSBrokers.certificates.wrongCA
        let backoff = AMQPBackoff(initial: .milliseconds(50), maximum: .milliseconds(200))
        try await withPublisher(.init(connection: connection, reconnectBackoff: backoff)) { publisher in
            try await waitUntil("publisher to report why it cannot connect") {
                if case .disconnected(let reason) = publisher.state { return reason.contains("broker certificate not trusted") }
                return false
            }
        }
    }

    @Test func amqpsToThePlainAMQPPortFailsInTheHandshake() async throws {
        let node = try TLSBrokers.serverOnly
        var connection = try node.tlsConnection()
        connection.port = node.port
        let error = await #expect(throws: AMQPError.self) { try await AMQPAdmin(connection: connection).declare() }
        #expect(error?.kind == .connectionFailed)
        #expect(error?.message.contains("TLS handshake failed") == true, "\(String(describing: error))")
    }

    @Test func ipAddressInsteadOfTheCertificateNameFailsWithAHostNameMessage() async throws {
        let connection = try TLSBrokers.serverOnly.tlsConnection(host: "127.0.0.1")
        let error = await #expect(throws: AMQPError.self) { try await AMQPAdmin(connection: connection).declare() }
        #expect(error?.kind == .connectionFailed)
        #expect(error?.message.contains("does not name host 127.0.0.1") == true, "\(String(describing: error))")
        #expect(error?.message.contains("host name verification failed") == true)
    }

    @Test func brokerRequiringAClientCertificateRefusesAClientWithout() async throws {
        let connection = try TLSBrokers.mutual.tlsConnection()
        let error = await #expect(throws: AMQPError.self) { try await AMQPAdmin(connection: connection).declare() }
        #expect(error?.kind == .connectionFailed)
        #expect(error?.message.contains("requires a client certificate and none is configured") == true, "\(String(describing: error))")
    }

    @Test func brokerRequiringAClientCertificateRefusesOneFromAnotherCA() async throws {
        let certificates = try TLSBrokers.certificates
        var connection = try TLSBrokers.mutual.tlsConnection()
        connection.tls?.clientCertificatePath = certificates.untrustedClientCertificate
        connection.tls?.clientKeyPath = certificates.untrustedClientKey
        let error = await #expect(throws: AMQPError.self) { try await AMQPAdmin(connection: connection).declare() }
        #expect(error?.kind == .connectionFailed)
        #expect(error?.message.contains("did not accept client certificate") == true, "\(String(describing: error))")
        #expect(error?.message.contains("wrong-client.pem") == true)
    }

    @Test func brokerRequiringAClientCertificateAcceptsTheClientCertificate() async throws {
        let node = try TLSBrokers.mutual
        let certificates = try TLSBrokers.certificates
        var connection = try node.tlsConnection()
        connection.tls?.clientCertificatePath = certificates.clientCertificate
        connection.tls?.clientKeyPath = certificates.clientKey
        try await expectPublishes(over: connection, to: node)
    }

    @Test func clientCertificateWithoutKeyIsRefused() async throws {
        let node = try TLSBrokers.mutual
        var connection = try node.tlsConnection()
        connection.tls?.clientCertificatePath = try TLSBrokers.certificates.clientCertificate
        let error = await #expect(throws: AMQPError.self) { try await AMQPAdmin(connection: connection).declare() }
        #expect(error?.message.contains("client certificate and key must be given together") == true)
    }

    @Test func bridgePublishesOverMutualTLSWithItsCertificateFlags() async throws {
        let node = try TLSBrokers.mutual
        let certificates = try TLSBrokers.certificates
        let tlsPort = try #require(node.tls?.port)
        let exchange = "tls-bridge-\(UUID().uuidString.prefix(8))"
        let probe = try await QueueProbe(node: node, exchange: exchange)
        let bridge: BridgeProcess
        do {
            bridge = try await BridgeProcess(
                node: node,
                arguments: [
                    "--exchange", exchange, "--amqp-ca-file", certificates.ca,
                    "--amqp-client-cert", certificates.clientCertificate, "--amqp-client-key", certificates.clientKey,
                ],
                environment: ["AMQP_URL": "amqps://guest:guest@localhost:\(tlsPort)/%2F"])
            try await bridge.waitUntilHealthy()
            let response = try await postSigned(port: bridge.port, body: Webhooks.body(actions: ["LOGIN"]))
            #expect(response.status == 200)
            #expect(response.body.contains(#""events":1"#))
            #expect(!response.body.contains("spooled"), "confirmed by the broker over TLS, not spooled")
            let received = try await probe.waitForMessages(count: 1)
            #expect(received.first?.routingKey == "LOGIN")
        } catch {
            await probe.stop()
            throw error
        }
        await probe.stop()
        bridge.signal(SIGTERM)
        #expect(try await bridge.waitForExit() == 0)
    }

    /// Publishes one persistent message with a confirm over `connection` and reads it back from a
    /// queue on `node` (consumed over plain AMQP, independently of the connection under test).
    func expectPublishes(over connection: AMQPConnectionConfiguration, to node: RabbitMQNode) async throws {
        let exchange = "tls-\(UUID().uuidString.prefix(8))"
        let probe = try await QueueProbe(node: node, exchange: exchange)
        let messages: [AMQPInboundMessage]
        do {
            try await withPublisher(.init(connection: connection, exchanges: [.init(name: exchange, mode: .declareIfMissing)])) { publisher in
                do {
                    try await waitUntil("publisher connected over TLS") { publisher.state == .connected }
                } catch {
                    Issue.record("publisher state: \(publisher.state)")
                    throw error
                }
                try await waitUntil("owner waiting idle") { publisher.ownerWaitsIdle }
                try await publisher.publish([message(exchange: exchange, key: "TLS.OK", body: #"{"tls":true}"#, id: "tls-1")])
                // Over TLS the owner writes every call: a record's write is not the socket's.
                #expect(publisher.callerWriteCount == 0)
            }
            messages = try await probe.waitForMessages(count: 1)
        } catch {
            await probe.stop()
            throw error
        }
        await probe.stop()
        let received = try #require(messages.first)
        #expect(received.routingKey == "TLS.OK")
        #expect(received.body == Array(#"{"tls":true}"#.utf8))
        #expect(received.properties.persistent)
        #expect(received.properties.messageID == "tls-1")
    }
}

/// The suite's brokers. Ports 5695-5698 keep clear of the shared test node and the other dedicated ones.
enum TLSBrokers {
    static var certificates: TestCertificates {
        get throws { try made.get() }
    }
    /// Verifies the broker only: any client may connect.
    static var serverOnly: RabbitMQNode {
        get throws { RabbitMQNode(name: "tls", port: 5695, tls: TLSListener(port: 5696, certificates: try certificates)) }
    }
    /// `verify_peer` and `fail_if_no_peer_cert`: clients need a certificate signed by the test CA.
    static var mutual: RabbitMQNode {
        get throws {
            RabbitMQNode(name: "tls-mutual", port: 5697, tls: TLSListener(port: 5698, certificates: try certificates, verifyPeer: true))
        }
    }

    private static let made = Result { try TestCertificates.make() }
}

/// Starts ``TLSBrokers`` before the suite's tests and stops them after the last one.
struct TLSBrokersTrait: SuiteTrait, TestScoping {
    func provideScope(
        for test: Test, testCase: Test.Case?, performing function: @Sendable () async throws -> Void
    ) async throws {
        // The certificates are made once, by `openssl` runs: on a thread of their own.
        let nodes = try await onOwnThread { [try TLSBrokers.serverOnly, try TLSBrokers.mutual] }
        try await RabbitMQNode.stopping(nodes) {
            for node in nodes {
                try await node.stop()  // a node left by an interrupted run may hold older certificates
                try await node.start()
            }
            try await function()
        }
    }
}

extension Trait where Self == TLSBrokersTrait {
    /// Runs the suite against freshly started TLS brokers.
    static var tlsBrokers: Self { Self() }
}
