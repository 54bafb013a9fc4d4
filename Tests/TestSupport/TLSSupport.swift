import AMQPClient

/// Throwaway TLS material made by `scripts/make-test-certs` (see that script for what each file is).
public struct TestCertificates: Sendable {
    public let directory: String

    public var ca: String { directory + "/ca.pem" }
    /// A CA that signed nothing the brokers use.
    public var wrongCA: String { directory + "/wrong-ca.pem" }
    /// Signed by ``ca``.
    public var clientCertificate: String { directory + "/client.pem" }
    public var clientKey: String { directory + "/client.key" }
    /// A client certificate signed by ``wrongCA``.
    public var untrustedClientCertificate: String { directory + "/wrong-client.pem" }
    public var untrustedClientKey: String { directory + "/wrong-client.key" }

    /// Makes the certificates under the test state directory, or reuses them when still valid.
    /// Runs `openssl`: blocks the calling thread.
    @available(*, noasync, message: "runs openssl: call it from a thread of its own")
    public static func make() throws -> TestCertificates {
        let directory = Repository.stateDirectory + "/tls-certs"
        try runProcess(Repository.root + "/scripts/make-test-certs", [directory])
        return TestCertificates(directory: directory)
    }
}

/// An amqps listener on a test node, on 127.0.0.1 with a certificate for `localhost`.
public struct TLSListener: Sendable {
    public var port: Int
    public var certificates: TestCertificates
    /// `verify_peer` with `fail_if_no_peer_cert = true`: clients must present a certificate signed by the CA.
    public var verifyPeer: Bool

    public init(port: Int, certificates: TestCertificates, verifyPeer: Bool = false) {
        self.port = port
        self.certificates = certificates
        self.verifyPeer = verifyPeer
    }
}

extension RabbitMQNode {
    /// An `amqps://` connection to the node's TLS listener, trusting the test CA, with peer and
    /// host name verification on. `host` must be a name the server certificate lists (`localhost`).
    public func tlsConnection(host: String = "localhost") throws -> AMQPConnectionConfiguration {
        guard let tls else { throw TLSListenerMissing(node: name) }
        var configuration = try AMQPConnectionConfiguration(url: "amqps://guest:guest@\(host):\(tls.port)/%2F")
        configuration.tls?.caCertificatePath = tls.certificates.ca
        configuration.heartbeat = .seconds(5)
        configuration.connectionName = "tc-bridge-tls-tests"
        return configuration
    }
}

public struct TLSListenerMissing: Error, CustomStringConvertible {
    public var node: String
    public var description: String { "node \(node) has no TLS listener" }
}
