import AMQPClient
import DurableSpool
import DurationUnits
import HTTPTypes
import Hummingbird
import Logging
import Metrics
import NIOCore
import ServiceLifecycle
import Tracing
import TutorCruncher
import TutorCruncherSignature

/// Builds the receiver's router: `POST /webhook[/...]`, `GET /health`, `GET /ready`; 405 for other
/// methods on the webhook paths, 404 elsewhere. Router-level tests use this directly.
///
/// `metrics`, when given, serves `GET /metrics`: it returns the exposition (Prometheus text format)
/// after the point-in-time gauges (broker state, spool depth, dedup entries) are set.
public func buildRouter(
    configuration: BridgeConfiguration, publisher: any EventPublishing, spool: DurableSpool? = nil, logger: Logger,
    connections: ConnectionCount? = nil, metrics: (@Sendable () -> [UInt8])? = nil
) -> Router<BasicRequestContext> {
    let router = Router(context: BasicRequestContext.self)
    let dedup = configuration.dedup ?? configuration.dedupWindow.flatMap { $0 > .zero ? DedupWindow(window: $0, maxEntries: configuration.dedupMaxEntries) : nil }
    let ingest = WebhookIngest(configuration: configuration, publisher: publisher, spool: spool, dedup: dedup, logger: logger)
    let signatureHeader = HTTPField.Name("webhook-signature")!
    let maxBodyBytes = configuration.maxBodyBytes

    let bodyBudget = ByteBudget(limit: configuration.limits.unverifiedBodyBudget)
    let smallBody = 64 << 10

    /// One webhook request, in a server span when tracing is on (its context reaches the
    /// messages' headers through `ServiceContext.current`).
    @Sendable func receive(_ request: Request, _ context: BasicRequestContext) async throws -> Response {
        guard let tracer = configuration.tracer else { return try await answer(request, context, span: nil) }
        return try await tracer.withSpan("POST /webhook", ofKind: .server) { span in
            try await answer(request, context, span: span)
        }
    }

    /// One webhook request: handled, counted, and logged in one line at info (request id,
    /// outcome, status, events, actions, bytes, milliseconds; never the body or a key).
    @Sendable func answer(_ request: Request, _ context: BasicRequestContext, span: (any Span)?) async throws -> Response {
        let started = ContinuousClock.now
        let (result, bytes) = try await handleWebhook(request)
        let elapsed = ContinuousClock.now - started
        if let span {
            span.attributes["http.request.method"] = "POST"
            span.attributes["url.path"] = String(request.uri.path.prefix(256))
            span.attributes["http.response.status_code"] = result.status
            span.attributes["tcbridge.request_id"] = context.id
            span.attributes["tcbridge.outcome"] = result.outcome.rawValue
            span.attributes["tcbridge.events"] = result.eventCount
            if result.status >= 500 { span.setStatus(SpanStatus(code: .error)) }
        }
        BridgeMetrics.requestDuration.record(elapsed)
        BridgeMetrics.webhooks(result.outcome).increment()
        logger.info(
            "webhook",
            metadata: [
                "request_id": "\(context.id)", "outcome": "\(result.outcome.rawValue)", "status": "\(result.status)",
                "events": "\(result.eventCount)", "actions": "\(result.actions.joined(separator: ","))", "bytes": "\(bytes)",
                "ms": "\(elapsed.clampedMilliseconds)",
            ])
        var response = jsonResponse(result)
        switch result.outcome {
        case .unverifiedBudgetExhausted:
            response.headers[.retryAfter] = "1"
            response = closing(response)
        // A client that cannot sign, or whose body was not read, gets no keep-alive.
        case .signatureMissing, .signatureMalformed, .signatureMismatch, .bodyTooLarge, .lengthRequired:
            response = closing(response)
        default:
            if result.status == 403 { response = closing(response) }
        }
        return response
    }

    /// Reads nothing before the signature header is known to be well-formed, and never holds more
    /// unverified body bytes than the global budget allows. Returns the answer and the bytes read.
    @Sendable func handleWebhook(_ request: Request) async throws -> (IngestResponse, Int) {
        let headers = WebhookRequestHeaders(request.headers, signatureName: signatureHeader)
        let signature = headers.signature
        if let rejection = WebhookVerifier.precheck(signatureHeader: signature) {
            return (ingest.rejected(rejection, path: request.uri.path, bodyBytes: nil), 0)
        }
        let declaredLength = headers.contentLength.flatMap { Int($0) }
        // TutorCruncher always sends Content-Length; a chunked body of tiny chunks would cost a
        // request part per few bytes.
        if declaredLength == nil, headers.hasTransferEncoding {
            return (.error(411, "Content-Length required", .lengthRequired), 0)
        }
        if let declaredLength, declaredLength > maxBodyBytes {
            return (.error(413, "body larger than \(maxBodyBytes) bytes", .bodyTooLarge), 0)
        }
        // Bytes are taken from the budget as they arrive, so a client that announces much and
        // sends little holds little. Bodies that announce at most `smallBody` bytes (every genuine
        // TutorCruncher delivery) may use the whole budget; others leave a share for them, so a
        // flood of big unsigned bodies cannot starve genuine ones.
        let ceiling = (declaredLength ?? .max) <= smallBody ? bodyBudget.limit : bodyBudget.limit - bodyBudget.limit / 8
        var reserved = 0
        defer { bodyBudget.release(reserved) }
        var body: [UInt8] = []
        // An announced size costs nothing until bytes arrive: 64 KiB first, then (once that much
        // has really come) the whole announced size in one step, so no doubling copies.
        if let declaredLength { body.reserveCapacity(min(declaredLength, smallBody)) }
        for try await chunk in request.body {
            let count = chunk.readableBytes
            guard body.count + count <= maxBodyBytes else {
                return (.error(413, "body larger than \(maxBodyBytes) bytes", .bodyTooLarge), body.count)
            }
            guard bodyBudget.reserve(count, ceiling: ceiling) else {
                logger.warning("unverified body budget exhausted; answering 503", metadata: ["budget_bytes": "\(bodyBudget.limit)"])
                return (.error(503, "too many bodies in flight, retry later", .unverifiedBudgetExhausted), body.count)
            }
            reserved += count
            if let declaredLength, body.count + count > body.capacity { body.reserveCapacity(declaredLength) }
            body.append(contentsOf: chunk.readableBytesView)
        }
        let result = await ingest.handle(
            body: body, path: request.uri.path, signature: signature,
            onVerified: {
                // From here on the body is the sender's: it no longer counts against the budget.
                bodyBudget.release(reserved)
                reserved = 0
            })
        return (result, body.count)
    }

    @Sendable func methodNotAllowed(_ request: Request, _ context: BasicRequestContext) async throws -> Response {
        var response = jsonResponse(JSONAnswer(status: 405, body: JSONObject(["error": .string("method not allowed; use POST")])))
        response.headers[.allow] = "POST"
        return response
    }

    for path in ["webhook", "webhook/**"] {
        router.post(RouterPath(path), use: receive)
        for method in [HTTPRequest.Method.get, .put, .delete, .patch, .head, .options] {
            router.on(RouterPath(path), method: method, use: methodNotAllowed)
        }
    }
    let health: @Sendable () -> BridgeHealth = {
        BridgeHealth(
            broker: publisher.state,
            spool: spool.map { spool in
                let depth = spool.depth
                return BridgeHealth.SpoolState(
                    records: depth.records, bytes: depth.bytes, maxBytes: spool.configuration.maxBytes,
                    corruptRecordsSetAside: spool.corruptSpans, unavailableReason: spool.unavailableReason,
                    oldestRecordAge: spool.oldestRecordAge)
            })
    }
    router.get("health") { _, _ -> Response in jsonResponse(health().healthAnswer) }
    if let metrics {
        router.get("metrics") { _, _ -> Response in
            BridgeMetrics.recordState(health(), dedupEntries: dedup?.count, openConnections: connections?.current ?? 0)
            return Response(
                status: .ok, headers: [.contentType: "text/plain; version=0.0.4; charset=utf-8"],
                body: ResponseBody(byteBuffer: ByteBuffer(bytes: metrics())))
        }
    }
    // Readiness for load balancers (see ``BridgeHealth``).
    router.get("ready") { _, _ -> Response in jsonResponse(health().readinessAnswer) }
    return router
}

/// Builds the whole receiver application. `services` (normally the ``AMQPPublisher``) run inside
/// the application's service group and are shut down after the HTTP server has drained, so
/// in-flight requests still get their confirms.
public func buildApplication(
    configuration: BridgeConfiguration,
    publisher: any EventPublishing,
    spool: DurableSpool? = nil,
    services: [any Service] = [],
    logger: Logger,
    metrics: (@Sendable () -> [UInt8])? = nil,
    onListening: @escaping @Sendable (_ port: Int) async -> Void = { _ in }
) -> some ApplicationProtocol {
    let connections = ConnectionCount()
    let router = buildRouter(
        configuration: configuration, publisher: publisher, spool: spool, logger: logger, connections: connections, metrics: metrics)
    return Application(
        router: router,
        server: .guardedHTTP1(limits: configuration.limits, connections: connections, logger: logger),
        configuration: ApplicationConfiguration(
            address: .hostname(configuration.host, port: configuration.port),
            serverName: nil),
        services: services,
        onServerRunning: { channel in await onListening(channel.localAddress?.port ?? configuration.port) },
        logger: logger)
}

/// The header fields the webhook route reads, found in one pass over the request's fields.
///
/// A field sent more than once reads as its values joined with ", ", as `HTTPFields`' subscript
/// gives it (so two `webhook-signature` fields are a malformed signature, never the first one
/// alone). That subscript joins through a generic sequence on every call: three calls per request
/// cost about 1.5 % of the bridge's CPU.
struct WebhookRequestHeaders {
    var signature: String?
    var contentLength: String?
    var hasTransferEncoding = false

    init(_ fields: HTTPFields, signatureName: HTTPField.Name) {
        for field in fields {
            switch field.name {
            case signatureName: Self.join(field.value, into: &signature)
            case .contentLength: Self.join(field.value, into: &contentLength)
            case .transferEncoding: hasTransferEncoding = true
            default: break
            }
        }
    }

    /// Appends in place (the string is taken out of the optional, so it is unique): a sender
    /// repeating a field up to the decoder's limits costs linear time, not quadratic.
    private static func join(_ value: String, into joined: inout String?) {
        guard var earlier = joined.take() else {
            joined = value
            return
        }
        earlier += ", "
        earlier += value
        joined = earlier
    }
}

/// Marks a response that is sent before its request body was read: the connection is closed
/// after it rather than drained.
private func closing(_ response: Response) -> Response {
    var response = response
    response.headers[.connection] = "close"
    return response
}

private func jsonResponse(_ result: IngestResponse) -> Response {
    jsonResponse(JSONAnswer(status: result.status, body: result.body))
}

private func jsonResponse(_ result: JSONAnswer) -> Response {
    var bytes = JSONWriter.bytes(.object(result.body))
    bytes.append(UInt8(ascii: "\n"))
    return Response(
        status: HTTPResponse.Status(code: result.status),
        headers: [.contentType: "application/json"],
        body: ResponseBody(byteBuffer: ByteBuffer(bytes: bytes)))
}
