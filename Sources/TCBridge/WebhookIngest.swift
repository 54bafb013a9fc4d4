import AMQPClient
import DurableSpool
import Logging
import Metrics
import TutorCruncher

/// The receiver's decision for one request, independent of the HTTP framework.
public struct IngestResponse: Sendable, Equatable {
    public var status: Int
    /// A small JSON object for the sender's log: never secrets, never the payload.
    public var body: JSONObject

    static func error(_ status: Int, _ message: String) -> IngestResponse {
        IngestResponse(status: status, body: JSONObject(["error": .string(message)]))
    }
}

/// Verifies, classifies, normalises and publishes one webhook request.
///
/// Order: the signature over the exact bytes is checked before anything is parsed. A verified
/// request is never answered 4xx (TutorCruncher disables endpoints that answer too many). It is
/// answered 200 once its messages are confirmed by the broker, or, when the broker is down,
/// blocked, nacks or misses the confirm deadline, once they are durably in the spool; 503 only when
/// neither is possible (no spool, spool full or unwritable), so the sender retries.
/// An identical body already answered 2xx within the dedup window is answered 200 and not
/// published again. The one 4xx for a verified body: a `request_time` outside the replay window
/// (a captured request replayed later) is answered 403. Thread-safe; one instance serves every request.
public struct WebhookIngest: Sendable {
    let keyring: SigningKeyring  // i7-secrets: read once per request through `verifier`
    let replayWindow: ReplayWindow?  // i7-secrets
    let factory: MessageFactory
    let publisher: any EventPublishing
    let spool: DurableSpool?
    let dedup: DedupWindow?
    let logger: Logger
    let parser = JSONParser()

    public init(
        configuration: BridgeConfiguration, publisher: any EventPublishing, spool: DurableSpool? = nil,
        dedup: DedupWindow? = nil, logger: Logger
    ) {
        self.keyring = configuration.keyring ?? SigningKeyring(configuration.verifier)  // i7-secrets
        self.replayWindow = configuration.replayWindow  // i7-secrets
        self.factory = MessageFactory(exchange: configuration.exchange, appID: configuration.appID)
        self.publisher = publisher
        self.spool = spool
        self.dedup = dedup
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
        if let refusal = replayRefusal(body: body, path: path) { return refusal }  // i7-secrets: replay window, before dedup
        let digest = sha256Hex(body)
        if let dedup {
            switch await dedup.claim(digest) {
            case .duplicate:
                Counter(label: "tcbridge_webhooks_total", dimensions: [("outcome", "duplicate")]).increment()
                logger.info("identical body within the dedup window; not published again", metadata: ["body_sha256": "\(digest)"])
                return IngestResponse(status: 200, body: JSONObject(["duplicate": .bool(true)]))
            case .new:
                break
            }
        }
        let response = await deliver(body: body, digest: digest, path: path, receivedAt: receivedAt)
        await dedup?.complete(digest, accepted: response.status == 200)
        return response
    }

    private func deliver(body: [UInt8], digest: String, path: String, receivedAt: UTCTimestamp) async -> IngestResponse {
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

        var answer = JSONObject(["events": .number(String(eventCount))])
        if eventCount == 0, messages.first?.routingKey == MessageFactory.unrecognisedRoutingKey {
            answer["unrecognised"] = .bool(true)
        }
        do {
            try await publisher.publish(messages)
            Counter(label: "tcbridge_webhooks_total", dimensions: [("outcome", "published")]).increment()
            Counter(label: "tcbridge_messages_published_total").increment(by: messages.count)
            logger.debug("published", metadata: ["path": "\(path)", "messages": "\(messages.count)", "body_sha256": "\(digest)"])
            return IngestResponse(status: 200, body: answer)
        } catch {
            guard let spool else {
                Counter(label: "tcbridge_webhooks_total", dimensions: [("outcome", "broker_unavailable")]).increment()
                logger.warning(
                    "broker did not confirm; answering 503",
                    metadata: ["path": "\(path)", "messages": "\(messages.count)", "error": "\(error)", "body_sha256": "\(digest)"])
                return .error(503, "broker unavailable, retry later")
            }
            do {
                try await spool.append(SpooledMessages.encode(messages))
            } catch {
                Counter(label: "tcbridge_webhooks_total", dimensions: [("outcome", "spool_refused")]).increment()
                logger.error(
                    "broker unavailable and spool refused the events; answering 503",
                    metadata: ["path": "\(path)", "error": "\(error)", "body_sha256": "\(digest)"])
                return .error(503, "temporarily unable to accept events, retry later")
            }
            Counter(label: "tcbridge_webhooks_total", dimensions: [("outcome", "spooled")]).increment()
            logger.info(
                "broker unavailable; events spooled",
                metadata: ["path": "\(path)", "messages": "\(messages.count)", "reason": "\(error)", "body_sha256": "\(digest)"])
            answer["spooled"] = .bool(true)
            return IngestResponse(status: 200, body: answer)
        }
    }
}
