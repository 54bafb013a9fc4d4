import AMQPClient
import DurableSpool
import HTTPTypes
import Hummingbird
import Logging
import Metrics
import NIOCore
import ServiceLifecycle
import TutorCruncher

/// Builds the receiver's router: `POST /webhook[/...]`, `GET /health`, `GET /ready`; 405 for other
/// methods on the webhook paths, 404 elsewhere. Router-level tests use this directly.
public func buildRouter(
    configuration: BridgeConfiguration, publisher: any EventPublishing, spool: DurableSpool? = nil, logger: Logger
) -> Router<BasicRequestContext> {
    let router = Router(context: BasicRequestContext.self)
    let dedup = configuration.dedup ?? configuration.dedupWindow.flatMap { $0 > .zero ? DedupWindow(window: $0, maxEntries: configuration.dedupMaxEntries) : nil }
    let ingest = WebhookIngest(configuration: configuration, publisher: publisher, spool: spool, dedup: dedup, logger: logger)
    let signatureHeader = HTTPField.Name("webhook-signature")!
    let maxBodyBytes = configuration.maxBodyBytes

    let bodyBudget = ByteBudget(limit: configuration.limits.unverifiedBodyBudget)
    let smallBody = 64 << 10

    /// Reads nothing before the signature header is known to be well-formed, and never holds more
    /// unverified body bytes than the global budget allows.
    @Sendable func receive(_ request: Request, _ context: BasicRequestContext) async throws -> Response {
        let signature = request.headers[signatureHeader]
        if let rejection = WebhookVerifier.precheck(signatureHeader: signature) {
            return closing(jsonResponse(ingest.rejected(rejection, path: request.uri.path, bodyBytes: nil)))
        }
        let declaredLength = request.headers[.contentLength].flatMap { Int($0) }
        // TutorCruncher always sends Content-Length; a chunked body of tiny chunks would cost a
        // request part per few bytes.
        if declaredLength == nil, request.headers[.transferEncoding] != nil {
            return closing(jsonResponse(.error(411, "Content-Length required")))
        }
        if let declaredLength, declaredLength > maxBodyBytes {
            return closing(jsonResponse(.error(413, "body larger than \(maxBodyBytes) bytes")))
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
                return closing(jsonResponse(.error(413, "body larger than \(maxBodyBytes) bytes")))
            }
            guard bodyBudget.reserve(count, ceiling: ceiling) else { return overBudget() }
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
        // A client that cannot sign gets no keep-alive.
        return result.status == 403 ? closing(jsonResponse(result)) : jsonResponse(result)
    }

    @Sendable func overBudget() -> Response {
        Counter(label: "tcbridge_webhooks_total", dimensions: [("outcome", "unverified_budget_exhausted")]).increment()
        logger.warning("unverified body budget exhausted; answering 503", metadata: ["budget_bytes": "\(bodyBudget.limit)"])
        var response = closing(jsonResponse(.error(503, "too many bodies in flight, retry later")))
        response.headers[.retryAfter] = "1"
        return response
    }

    @Sendable func methodNotAllowed(_ request: Request, _ context: BasicRequestContext) async throws -> Response {
        var response = jsonResponse(.error(405, "method not allowed; use POST"))
        response.headers[.allow] = "POST"
        return response
    }

    for path in ["webhook", "webhook/**"] {
        router.post(RouterPath(path), use: receive)
        for method in [HTTPRequest.Method.get, .put, .delete, .patch, .head, .options] {
            router.on(RouterPath(path), method: method, use: methodNotAllowed)
        }
    }
    router.get("health") { _, _ -> Response in
        let state = publisher.state
        var body = JSONObject()
        let healthy: Bool
        switch state {
        case .connected:
            healthy = true
            body["broker"] = .string("connected")
        case .blocked(let reason):
            healthy = true
            body["broker"] = .string("blocked")
            body["reason"] = .string(reason)
        case .connecting:
            healthy = false
            body["broker"] = .string("connecting")
        case .disconnected:
            healthy = false
            body["broker"] = .string("disconnected")
        case .misconfigured(let reason):
            healthy = false
            body["broker"] = .string("misconfigured")
            body["reason"] = .string(reason)
        case .closed:
            healthy = false
            body["broker"] = .string("closed")
        }
        body["status"] = .string(healthy ? "ok" : "unavailable")
        if let spool {
            let depth = spool.depth
            var spoolState = JSONObject(["records": .number(String(depth.records)), "bytes": .number(String(depth.bytes))])
            if spool.corruptSpans > 0 { spoolState["corrupt_records_set_aside"] = .number(String(spool.corruptSpans)) }
            body["spool"] = .object(spoolState)
        }
        return jsonResponse(IngestResponse(status: healthy ? 200 : 503, body: body))
    }
    // Readiness for load balancers: can a webhook be accepted durably right now (broker or spool),
    // and will what is accepted be published? Not while the broker refuses the bridge's
    // configuration: that does not clear by itself, so spooling would only fill the spool.
    router.get("ready") { _, _ -> Response in
        let state = publisher.state
        let brokerUp = state == .connected
        let spoolUp: Bool
        if let spool {
            spoolUp = spool.unavailableReason == nil && spool.depth.bytes < spool.configuration.maxBytes
        } else {
            spoolUp = false
        }
        var refusal: String?
        if case .misconfigured(let reason) = state { refusal = reason }
        let ready = (brokerUp || spoolUp) && refusal == nil
        var body = JSONObject(["ready": .bool(ready), "broker": .bool(brokerUp), "spool": .bool(spoolUp)])
        if let refusal { body["reason"] = .string("the broker refuses the bridge's configuration: \(refusal)") }
        return jsonResponse(IngestResponse(status: ready ? 200 : 503, body: body))
    }
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
    onListening: @escaping @Sendable (_ port: Int) async -> Void = { _ in }
) -> some ApplicationProtocol {
    let router = buildRouter(configuration: configuration, publisher: publisher, spool: spool, logger: logger)
    return Application(
        router: router,
        server: .guardedHTTP1(limits: configuration.limits, connections: ConnectionCount(), logger: logger),
        configuration: ApplicationConfiguration(
            address: .hostname(configuration.host, port: configuration.port),
            serverName: nil),
        services: services,
        onServerRunning: { channel in await onListening(channel.localAddress?.port ?? configuration.port) },
        logger: logger)
}

/// Marks a response that is sent before its request body was read: the connection is closed
/// after it rather than drained.
private func closing(_ response: Response) -> Response {
    var response = response
    response.headers[.connection] = "close"
    return response
}

private func jsonResponse(_ result: IngestResponse) -> Response {
    var bytes = JSONWriter.bytes(.object(result.body))
    bytes.append(UInt8(ascii: "\n"))
    return Response(
        status: HTTPResponse.Status(code: result.status),
        headers: [.contentType: "application/json"],
        body: ResponseBody(byteBuffer: ByteBuffer(bytes: bytes)))
}
