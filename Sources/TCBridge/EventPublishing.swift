import AMQPClient

/// Where the receiver sends messages. ``AMQPPublisher`` is the production implementation;
/// tests may substitute a fake for router-level checks.
///
/// Contract: `publish` returns only when every message is durably accepted by the broker, and
/// throws otherwise. Safe to call concurrently.
public protocol EventPublishing: Sendable {
    func publish(_ messages: [AMQPOutboundMessage]) async throws(AMQPError)
    var state: AMQPConnectionState { get }
}

extension AMQPPublisher: EventPublishing {}
