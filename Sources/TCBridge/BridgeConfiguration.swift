import TutorCruncher

/// Everything the receiver needs besides the broker connection itself.
public struct BridgeConfiguration: Sendable {
    /// Interface to listen on (default `127.0.0.1`).
    public var host: String
    /// TCP port (default 8080; 0 picks a free port).
    public var port: Int
    /// The topic exchange events are published to (default `tutorcruncher`).
    public var exchange: String
    /// Largest accepted request body; larger requests get 413 (default 16 MiB).
    public var maxBodyBytes: Int
    /// Verifies `webhook-signature` with the integration's private API key(s).
    public var verifier: WebhookVerifier
    /// The AMQP `app_id` property of published messages (default `tc-bridge`).
    public var appID: String

    public init(
        host: String = "127.0.0.1",
        port: Int = 8080,
        exchange: String = "tutorcruncher",
        maxBodyBytes: Int = 16 * 1024 * 1024,
        verifier: WebhookVerifier,
        appID: String = "tc-bridge"
    ) {
        self.host = host
        self.port = port
        self.exchange = exchange
        self.maxBodyBytes = maxBodyBytes
        self.verifier = verifier
        self.appID = appID
    }
}
