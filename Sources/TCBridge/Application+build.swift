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
    let health: @Sendable () -> BridgeHealth = {
        BridgeHealth(
            broker: publisher.state,
            spool: spool.map { spool in
                let depth = spool.depth
                return BridgeHealth.SpoolState(
                    records: depth.records, bytes: depth.bytes, maxBytes: spool.configuration.maxBytes,
                    corruptRecordsSetAside: spool.corruptSpans, unavailableReason: spool.unavailableReason)
            })
    }
    router.get("health") { _, _ -> Response in jsonResponse(health().healthAnswer) }
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
