import AMQPClient
import Hummingbird
import HummingbirdTesting
import Logging
import TCBridge
import TutorCruncher
import TutorCruncherSignature

/// Runs the real receiver (real AMQPPublisher, real broker) and gives `body` its port.
public func withLiveBridge(
    node: RabbitMQNode = .shared, exchange: String, maxBodyBytes: Int = 1 << 20,
    _ body: @escaping @Sendable (_ port: Int, _ publisher: AMQPPublisher) async throws -> Void
) async throws {
    var logger = Logger(label: "bridge-under-test")
    logger.logLevel = .error
    let publisher = AMQPPublisher(
        configuration: AMQPPublisherConfiguration(
            connection: node.connection,
            exchanges: BridgeTopology(exchange: exchange, alternateExchange: BridgeTopology.defaultAlternateExchange(for: exchange)).exchanges,
            queues: BridgeTopology(exchange: exchange, alternateExchange: BridgeTopology.defaultAlternateExchange(for: exchange)).queues,
            reconnectBackoff: AMQPBackoff(initial: .milliseconds(50), maximum: .milliseconds(500))),
        logger: logger)
    let app = buildApplication(
        configuration: BridgeConfiguration(port: 0, exchange: exchange, maxBodyBytes: maxBodyBytes, verifier: Webhooks.verifier),
        publisher: publisher, services: [publisher], logger: logger)
    try await app.test(.live) { client in
        try await waitUntil("bridge connected to the broker") { publisher.state == .connected }
        guard let port = client.port else { throw TimedOut(what: "live test server port", timeout: .zero) }
        try await body(port, publisher)
    }
}


/// Runs a publisher declaring the bridge's default topology for `exchange` while `body` runs.
func withTestPublisher<R>(node: RabbitMQNode, exchange: String, _ body: (AMQPPublisher) async throws -> R) async throws -> R {
    var logger = Logger(label: "test-publisher")
    logger.logLevel = .error
    let topology = bridgeTopology(exchange)
    let publisher = AMQPPublisher(
        configuration: AMQPPublisherConfiguration(connection: node.connection, exchanges: topology.exchanges, queues: topology.queues),
        logger: logger)
    let runner = Task { try await publisher.run() }
    defer { publisher.requestStop() }
    try await waitUntil("test publisher connected") { publisher.state == .connected }
    let result = try await body(publisher)
    publisher.requestStop()
    try await runner.value
    return result
}

/// Publishes webhook bodies the way the bridge does (same envelopes, same message properties),
/// straight through an AMQPPublisher; returns the envelopes. For consumer tests that need many events fast.
/// `headers` are added to every message (e.g. trace context).
public func publishWebhookBodies(
    node: RabbitMQNode = .shared, exchange: String, bodies: [[UInt8]], headers: [(String, AMQPHeaderValue)] = []
) async throws -> [EventEnvelope] {
    let (envelopes, messages) = webhookMessages(exchange: exchange, bodies: bodies, headers: headers)
    try await publishMessages(node: node, exchange: exchange, messages)
    return envelopes
}

/// The envelopes and messages the bridge would publish for `bodies`, with `headers` added to each.
public func webhookMessages(
    exchange: String, bodies: [[UInt8]], headers: [(String, AMQPHeaderValue)] = []
) -> (envelopes: [EventEnvelope], messages: [AMQPOutboundMessage]) {
    let factory = MessageFactory(exchange: exchange, appID: "tests")
    let now = UTCTimestamp.now()
    var envelopes: [EventEnvelope] = []
    for body in bodies {
        guard case .events(let batch) = WebhookPayload.parse(body) else { continue }
        envelopes += EventEnvelope.envelopes(for: batch, bodyDigest: sha256Hex(body), receivedAt: now)
    }
    let messages = envelopes.map {
        var message = factory.message(for: $0, receivedAt: now)
        message.properties.headers += headers
        return message
    }
    return (envelopes, messages)
}

/// Publishes `messages` (confirmed) on `exchange`, declared with the bridge's topology.
public func publishMessages(node: RabbitMQNode = .shared, exchange: String, _ messages: [AMQPOutboundMessage]) async throws {
    try await withTestPublisher(node: node, exchange: exchange) { try await $0.publish(messages) }
}

/// Publishes raw bytes with a routing key (for undecodable-message tests).
public func publishRaw(node: RabbitMQNode = .shared, exchange: String, routingKey: String, body: [UInt8]) async throws {
    let message = AMQPOutboundMessage(exchange: exchange, routingKey: routingKey, properties: AMQPProperties(), body: body)
    try await withTestPublisher(node: node, exchange: exchange) { try await $0.publish([message]) }
}

/// The topology `tc-bridge serve` declares by default for `exchange`.
public func bridgeTopology(_ exchange: String) -> BridgeTopology {
    BridgeTopology(exchange: exchange, alternateExchange: BridgeTopology.defaultAlternateExchange(for: exchange))
}
