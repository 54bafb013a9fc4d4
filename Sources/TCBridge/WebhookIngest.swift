import AMQPClient
import DurableSpool
import HexCoding
import Logging
import Metrics
import Tracing
import TutorCruncher
import TutorCruncherSignature

/// The receiver's decision for one request, independent of the HTTP framework.
public struct IngestResponse: Sendable, Equatable {
    public var status: Int
    /// A small JSON object for the sender's log: never secrets, never the payload.
    public var body: JSONObject
    /// What became of the request, for the metrics and the request's log line.
    public var outcome: WebhookOutcome
    /// Events in the body, and their distinct actions (at most ten), for the request's log line.
    public var eventCount = 0
    public var actions: [String] = []

    public init(status: Int, body: JSONObject, outcome: WebhookOutcome) {
        self.status = status
        self.body = body
        self.outcome = outcome
    }

    static func error(_ status: Int, _ message: String, _ outcome: WebhookOutcome) -> IngestResponse {
        IngestResponse(status: status, body: JSONObject(["error": .string(message)]), outcome: outcome)
    }
}

/// What became of one webhook request: the `outcome` label of `tcbridge_webhooks_total`.
public enum WebhookOutcome: String, Sendable, CaseIterable {
    case published
    case spooled
    case duplicate
    case signatureMissing = "signature_missing"
    case signatureMalformed = "signature_malformed"
    case signatureMismatch = "signature_mismatch"
    case requestTimeTooOld = "request_time_too_old"
    case requestTimeInFuture = "request_time_in_future"
    case bodyTooLarge = "body_too_large"
    case lengthRequired = "length_required"
    case unverifiedBudgetExhausted = "unverified_budget_exhausted"
    case brokerUnavailable = "broker_unavailable"
    case spoolRefused = "spool_refused"
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
///
/// A class, not a struct: each request's closures capture it, and a struct of this many
/// references was copied into each of them (a retain and a release per reference, about 1 % of
/// the bridge's CPU at 64 connections).
public final class WebhookIngest: Sendable {
    let keyring: SigningKeyring  // i7-secrets: read once per request through `verifier`
    let replayWindow: ReplayWindow?  // i7-secrets
    let factory: MessageFactory
    let publisher: any EventPublishing
    let spool: DurableSpool?
    let dedup: DedupWindow?
    let logger: Logger
    let parser = JSONParser()
    /// Writes the current trace context into messages' headers; `nil` when tracing is off.
    let tracer: (any Tracer)?

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
        self.tracer = configuration.tracer
    }

    /// The current span's context as message headers (`traceparent`, `tracestate` with swift-otel's
    /// tracer); empty when tracing is off or no span is current. Must run in the request's task
    /// (the context is task-local), not on the offload pool.
    func traceHeaders() -> [(String, AMQPHeaderValue)] {
        guard let tracer, let context = ServiceContext.current else { return [] }
        var headers: [(String, AMQPHeaderValue)] = []
        tracer.inject(context, into: &headers, using: AMQPHeaderInjector())
        return headers
    }

    /// `messages` with `trace` appended to their headers; a message the extra headers would make
    /// untravellable (one already at the frame limit) goes without them.
    static func adding(_ trace: [(String, AMQPHeaderValue)], to messages: [AMQPOutboundMessage]) -> [AMQPOutboundMessage] {
        guard !trace.isEmpty else { return messages }
        return messages.map { message in
            var traced = message
            traced.properties.headers += trace
            return traced.encodingProblem() == nil ? traced : message
        }
    }

    /// Handles one request. `onVerified` runs once the signature has been checked, whatever the
    /// outcome (the router then stops counting the body as unverified).
    public func handle(
        body: [UInt8], path: String, signature: String?, onVerified: () -> Void = {}
    ) async -> IngestResponse {
        let verification = await HeavyWork.run(bytes: body.count) { [self] in verifier.verify(body: body, signatureHeader: signature) }
        onVerified()
        guard verification == .valid else { return rejected(verification, path: path, bodyBytes: body.count) }

        let receivedAt = UTCTimestamp.now()
        // One pass reads the events and the request time (the body is signed: its sender's own);
        // a body that is not an event batch has its time read by the lenient root scan.
        // The body's SHA-256 once: the dedup window's key, and in hex for envelopes and logs.
        let (payload, refusal, key, digest) = await HeavyWork.run(bytes: body.count) {
            [self] () -> (ScannedWebhookPayload, IngestResponse?, BodyDigest, String) in
            let payload = WebhookPayload.scan(body, parser: parser)
            let hash = sha256(body)
            let digest = Hex.encode(hash)
            let refusal = replayRefusal(Self.requestTime(of: payload, body: body), bodySHA256: digest, path: path)  // i7-secrets: before dedup
            return (payload, refusal, BodyDigest(sha256: hash), digest)
        }
        if let refusal { return refusal }
        if let dedup {
            switch await dedup.claim(key) {
            case .duplicate:
                logger.debug("identical body within the dedup window; not published again", metadata: ["body_sha256": "\(digest)"])
                return IngestResponse(status: 200, body: JSONObject(["duplicate": .bool(true)]), outcome: .duplicate)
            case .new:
                break
            }
        }
        let response = await deliver(payload, body: body, digest: digest, path: path, receivedAt: receivedAt)
        await dedup?.complete(key, accepted: response.status == 200)
        return response
    }

    /// The answer to a request whose signature is not valid: 403, counted and logged (never the
    /// body or the header's value). `bodyBytes` is `nil` when the body was not read.
    public func rejected(_ verification: SignatureVerification, path: String, bodyBytes: Int?) -> IngestResponse {
        let outcome: WebhookOutcome
        let message: String
        switch verification {
        case .missing: (outcome, message) = (.signatureMissing, "missing webhook-signature header")
        case .malformed: (outcome, message) = (.signatureMalformed, "malformed webhook-signature header")
        case .mismatch, .valid: (outcome, message) = (.signatureMismatch, "invalid webhook-signature")
        }
        logger.notice(
            "rejected webhook: \(message)",
            metadata: ["path": "\(path.prefix(256))", "bytes": "\(bodyBytes.map(String.init) ?? "unread")"])
        return .error(403, message, outcome)
    }

    /// Bodies with more events than this go to the spool in chunks rather than straight to the
    /// broker: publishing a million events takes far longer than the sender's 8 s timeout, and the
    /// spool lets the forwarder resume a partial delivery where it stopped.
    static let directPublishLimit = 1000
    /// Events per spool record for such bodies: the unit the forwarder confirms and resumes by.
    static let spoolChunkEvents = 1000

    private func spoolInChunks(_ batch: EventSummaries, digest: String, path: String, receivedAt: UTCTimestamp) async -> IngestResponse {
        guard let spool else { return .error(503, "temporarily unable to accept events, retry later", .spoolRefused) }
        let count = batch.events.count
        let chunks = stride(from: 0, to: count, by: Self.spoolChunkEvents).map { $0..<min($0 + Self.spoolChunkEvents, count) }
        let factory = factory
        let trace = traceHeaders()
        // A few chunks in flight at a time: their appends share an fsync, and memory stays bounded.
        let failure: (any Error)? = await withTaskGroup(of: (any Error)?.self) { group in
            var next = chunks.makeIterator()
            var failure: (any Error)?
            func addNext() -> Bool {
                guard let range = next.next() else { return false }
                let messages = range.map { index in
                    factory.message(for: batch.envelope(at: index, bodyDigest: digest, receivedAt: receivedAt), receivedAt: receivedAt)
                }
                let record = SpooledMessages.encode(Self.adding(trace, to: messages))
                group.addTask {
                    do throws(SpoolError) {
                        try await spool.append(record)
                        return nil
                    } catch {
                        return error
                    }
                }
                return true
            }
            for _ in 0..<8 where addNext() {}
            while let result = await group.next() {
                if let result { failure = failure ?? result }
                if failure == nil { _ = addNext() }
            }
            return failure
        }
        if let failure {
            logger.error(
                "spool refused part of a large body; answering 503",
                metadata: ["path": "\(path)", "events": "\(count)", "error": "\(failure)", "body_sha256": "\(digest)"])
            return .error(503, "temporarily unable to accept events, retry later", .spoolRefused)
        }
        logger.info(
            "large body spooled for forwarding",
            metadata: ["path": "\(path)", "events": "\(count)", "records": "\(chunks.count)", "body_sha256": "\(digest)"])
        var response = IngestResponse(status: 200, body: JSONObject(["events": .number(String(count)), "spooled": .bool(true)]), outcome: .spooled)
        response.eventCount = count
        response.actions = Self.distinctActions(batch.events.lazy.map(\.action))
        return response
    }

    private func deliver(
        _ payload: ScannedWebhookPayload, body: [UInt8], digest: String, path: String, receivedAt: UTCTimestamp
    ) async -> IngestResponse {
        let prepared = await HeavyWork.run(bytes: body.count) { [self] () -> Prepared in
            switch payload {
            case .events(let batch) where spool != nil && batch.events.count > Self.directPublishLimit:
                return .spoolInChunks(batch)
            case .events(let batch):
                let messages = batch.events.indices.map { index in
                    factory.message(for: batch.envelope(at: index, bodyDigest: digest, receivedAt: receivedAt), receivedAt: receivedAt)
                }
                return .publish(messages, eventCount: messages.count)
            case .unrecognised(let reason):
                logger.info("publishing unrecognised body", metadata: ["path": "\(path)", "reason": "\(reason)"])
                return .publish(
                    [factory.unrecognisedMessage(body: body, bodyDigest: digest, path: path, reason: reason, receivedAt: receivedAt)], eventCount: 0)
            }
        }
        let messages: [AMQPOutboundMessage]
        let eventCount: Int
        switch prepared {
        case .spoolInChunks(let batch):
            return await spoolInChunks(batch, digest: digest, path: path, receivedAt: receivedAt)
        case .publish(let prepared, let count):
            (messages, eventCount) = (Self.adding(traceHeaders(), to: prepared), count)
        }

        var answer = JSONObject(["events": .number(String(eventCount))])
        if eventCount == 0, messages.first?.routingKey == MessageFactory.unrecognisedRoutingKey {
            answer["unrecognised"] = .bool(true)
        }
        let actions = Self.distinctActions(messages.lazy.map(\.routingKey))
        func answered(_ status: Int, _ body: JSONObject, _ outcome: WebhookOutcome) -> IngestResponse {
            var response = IngestResponse(status: status, body: body, outcome: outcome)
            response.eventCount = eventCount
            response.actions = actions
            return response
        }
        let confirmStarted = ContinuousClock.now
        do {
            try await publisher.publish(messages)
            BridgeMetrics.confirmDuration.record(ContinuousClock.now - confirmStarted)
            BridgeMetrics.messagesPublished.increment(by: messages.count)
            for action in messages.lazy.map(\.routingKey) { BridgeMetrics.events(action: action).increment() }
            return answered(200, answer, .published)
        } catch {
            guard let spool else {
                logger.warning(
                    "broker did not confirm; answering 503",
                    metadata: ["path": "\(path)", "messages": "\(messages.count)", "error": "\(error)", "body_sha256": "\(digest)"])
                return answered(503, JSONObject(["error": .string("broker unavailable, retry later")]), .brokerUnavailable)
            }
            do {
                try await spool.append(SpooledMessages.encode(messages))
            } catch {
                logger.error(
                    "broker unavailable and spool refused the events; answering 503",
                    metadata: ["path": "\(path)", "error": "\(error)", "body_sha256": "\(digest)"])
                return answered(503, JSONObject(["error": .string("temporarily unable to accept events, retry later")]), .spoolRefused)
            }
            logger.debug(
                "broker unavailable; events spooled",
                metadata: ["path": "\(path)", "messages": "\(messages.count)", "reason": "\(error)", "body_sha256": "\(digest)"])
            answer["spooled"] = .bool(true)
            return answered(200, answer, .spooled)
        }
    }

    /// The body's `request_time`: from the scan when it read events, else by the lenient root scan
    /// (a body that is not JSON, or not an event batch, may still carry one).
    static func requestTime(of payload: ScannedWebhookPayload, body: [UInt8]) -> RequestTime {
        if case .events(let batch) = payload { return RequestTime(scanned: batch) }
        return RequestTime.scan(body)
    }

    /// What a parsed body turns into.
    private enum Prepared: Sendable {
        case publish([AMQPOutboundMessage], eventCount: Int)
        case spoolInChunks(EventSummaries)
    }

    /// The distinct actions among `actions`, in first-seen order, at most ten, each cut to the 255
    /// bytes of a routing key (for log lines: a verified body's spooled events carry their actions
    /// as sent, of any length).
    static func distinctActions(_ actions: some Sequence<String>) -> [String] {
        var seen: [String] = []
        for raw in actions {
            let action = raw.utf8.count <= 255 ? raw : String(decoding: raw.utf8.prefix(255), as: UTF8.self)
            guard !seen.contains(action) else { continue }
            seen.append(action)
            if seen.count == 10 { break }
        }
        return seen
    }
}
