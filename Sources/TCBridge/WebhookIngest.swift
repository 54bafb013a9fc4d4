import AMQPClient
import Logging
import Metrics
import TutorCruncher

/// The receiver's decision for one request, independent of the HTTP framework.
public struct IngestResponse: Sendable, Equatable {
    public var status: Int
    /// A small JSON object for the sender's log: never secrets, never the payload.
    public var body: JSONObject

    static func ok(events: Int) -> IngestResponse {
        IngestResponse(status: 200, body: JSONObject(["events": .number(String(events))]))
    }

    static func error(_ status: Int, _ message: String) -> IngestResponse {
        IngestResponse(status: status, body: JSONObject(["error": .string(message)]))
    }
}

/// Verifies, classifies, normalises and publishes one webhook request.
///
/// Order: the signature over the exact bytes is checked before anything is parsed. A verified
/// request is never answered 4xx (TutorCruncher disables endpoints that answer too many): it is
/// either published and answered 200, or answered 503 when the broker cannot confirm it.
/// Thread-safe; one instance serves every request.
public struct WebhookIngest: Sendable {
    let verifier: WebhookVerifier
    let factory: MessageFactory
    let publisher: any EventPublishing
    let logger: Logger
    let parser = JSONParser()

    public init(configuration: BridgeConfiguration, publisher: any EventPublishing, logger: Logger) {
        self.verifier = configuration.verifier
        self.factory = MessageFactory(exchange: configuration.exchange, appID: configuration.appID)
        self.publisher = publisher
        self.logger = logger
    }

    public func handle(body: [UInt8], path: String, signature: String?) async -> IngestResponse {
        switch verifier.verify(body: body, signatureHeader: signature) {
        case .valid:
            break
        case .missing:
            Counter(label: "tcbridge_webhooks_total", dimensions: [("outcome", "signature_missing")]).increment()
            logger.notice("rejected webhook: no signature", metadata: ["path": "\(path)"])
            return .error(403, "missing webhook-signature header")
        case .malformed:
            Counter(label: "tcbridge_webhooks_total", dimensions: [("outcome", "signature_malformed")]).increment()
            logger.notice("rejected webhook: malformed signature", metadata: ["path": "\(path)"])
            return .error(403, "malformed webhook-signature header")
        case .mismatch:
            Counter(label: "tcbridge_webhooks_total", dimensions: [("outcome", "signature_mismatch")]).increment()
            logger.notice("rejected webhook: signature mismatch", metadata: ["path": "\(path)", "bytes": "\(body.count)"])
            return .error(403, "invalid webhook-signature")
        }

        let receivedAt = UTCTimestamp.now()
        let digest = sha256Hex(body)
        let messages: [AMQPOutboundMessage]
        let eventCount: Int
        switch WebhookPayload.parse(body, parser: parser) {
        case .events(let batch):
            let envelopes = EventEnvelope.envelopes(for: batch, bodyDigest: digest, receivedAt: receivedAt)
            messages = envelopes.map { factory.message(for: $0, receivedAt: receivedAt) }
            eventCount = envelopes.count
        case .unrecognised(let reason):
            logger.info("publishing unrecognised body", metadata: ["path": "\(path)", "reason": "\(reason)"])
            messages = [factory.unrecognisedMessage(body: body, bodyDigest: digest, path: path, reason: reason, receivedAt: receivedAt)]
            eventCount = 0
        }

        do {
            try await publisher.publish(messages)
        } catch {
            Counter(label: "tcbridge_webhooks_total", dimensions: [("outcome", "broker_unavailable")]).increment()
            logger.warning(
                "broker did not confirm; answering 503",
                metadata: ["path": "\(path)", "messages": "\(messages.count)", "error": "\(error)", "body_sha256": "\(digest)"])
            return .error(503, "broker unavailable, retry later")
        }
        Counter(label: "tcbridge_webhooks_total", dimensions: [("outcome", "published")]).increment()
        Counter(label: "tcbridge_messages_published_total").increment(by: messages.count)
        logger.debug("published", metadata: ["path": "\(path)", "messages": "\(messages.count)", "body_sha256": "\(digest)"])
        if eventCount == 0, messages.count == 1, messages[0].routingKey == MessageFactory.unrecognisedRoutingKey {
            return IngestResponse(status: 200, body: JSONObject(["events": .number("0"), "unrecognised": .bool(true)]))
        }
        return .ok(events: eventCount)
    }
}
