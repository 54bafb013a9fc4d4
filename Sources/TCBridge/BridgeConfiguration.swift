import Tracing
import TCBridgeContract
import TutorCruncher
import TutorCruncherSignature

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
    // MARK: i7-secrets: key rotation, replay window, persistent dedup
    /// When set, requests verify with this keyring's current key set instead of ``verifier``; the
    /// keyring can be given new keys while the bridge runs (SIGHUP). Default `nil`.
    public var keyring: SigningKeyring? = nil
    /// When set, a verified body whose `request_time` lies outside it is answered 403. Default `nil`
    /// (off) here; `tc-bridge serve` turns it on (one hour old, five minutes ahead).
    public var replayWindow: ReplayWindow? = nil
    /// When set, this dedup window (e.g. one persisted beside the spool) is used instead of an
    /// in-memory one built from ``dedupWindow`` and ``dedupMaxEntries``. Default `nil`.
    public var dedup: DedupWindow? = nil
    // MARK: -
    /// The AMQP `app_id` property of published messages (default `tc-bridge`).
    public var appID: String
    /// Identical bodies answered 2xx within this window are answered 200 again without publishing
    /// (default one hour; `nil` or zero: off).
    public var dedupWindow: Duration?
    /// Most bodies the dedup window remembers (default 100,000; about 70 bytes each).
    public var dedupMaxEntries: Int
    /// Timeouts, the connection cap and the budget for bodies not yet verified.
    public var limits: ConnectionLimits
    /// Distributed tracing: a span per webhook request, whose context is written into each of its
    /// messages' headers (with swift-otel's tracer: W3C `traceparent`, `tracestate`), so consumers
    /// continue the trace. `nil` (the default): no spans, no trace headers, no cost.
    public var tracer: (any Tracer)? = nil

    public init(
        host: String = "127.0.0.1",
        port: Int = 8080,
        exchange: String = BridgeContract.defaultExchange,
        maxBodyBytes: Int = 16 * 1024 * 1024,
        verifier: WebhookVerifier,
        appID: String = "tc-bridge",
        dedupWindow: Duration? = .seconds(3600),
        dedupMaxEntries: Int = 100_000,
        limits: ConnectionLimits = ConnectionLimits()
    ) {
        self.host = host
        self.port = port
        self.exchange = exchange
        self.maxBodyBytes = maxBodyBytes
        self.verifier = verifier
        self.appID = appID
        self.dedupWindow = dedupWindow
        self.dedupMaxEntries = dedupMaxEntries
        self.limits = limits
    }
}
