import HummingbirdCore
import Logging
import Metrics
import NIOCore
import NIOHTTP1
import Synchronization

/// Limits that keep slow or hostile clients from holding the public endpoint.
///
/// TutorCruncher sends small bodies in one go and gives up after 8 s, so a genuine request never
/// comes near these defaults.
public struct ConnectionLimits: Sendable, Equatable {
    /// From the first byte of a request to its complete head. Default 5 s.
    public var headerTimeout: Duration
    /// From a request's complete head to the end of its body: a client that trickles bytes is
    /// closed at this deadline whatever its rate. Default 10 s.
    public var bodyTimeout: Duration
    /// A keep-alive connection with no request in progress. Default 15 s.
    public var idleTimeout: Duration
    /// Open connections at most; beyond it a new connection is answered 503 and closed. Default 1024.
    public var maxConnections: Int
    /// Open connections from one client address at most, so one host cannot take every slot.
    /// Default 256. Behind a reverse proxy every connection comes from the proxy: raise it to
    /// `maxConnections` there.
    public var maxConnectionsPerClient: Int
    /// Bytes of request bodies received but not yet verified, across all requests. A request
    /// that would go beyond it is answered 503 with `Retry-After` and closed. Default 64 MiB.
    public var unverifiedBodyBudget: Int

    public init(
        headerTimeout: Duration = .seconds(5), bodyTimeout: Duration = .seconds(10), idleTimeout: Duration = .seconds(15),
        maxConnections: Int = 1024, maxConnectionsPerClient: Int = 256, unverifiedBodyBudget: Int = 64 << 20
    ) {
        self.headerTimeout = headerTimeout
        self.bodyTimeout = bodyTimeout
        self.idleTimeout = idleTimeout
        self.maxConnections = maxConnections
        self.maxConnectionsPerClient = maxConnectionsPerClient
        self.unverifiedBodyBudget = unverifiedBodyBudget
    }
}

/// Open connections, in all and per client address, shared by every connection; thread-safe.
public final class ConnectionCount: Sendable {
    private struct State {
        var total = 0
        var perClient: [String: Int] = [:]
    }
    private let state = Mutex(State())

    public init() {}

    /// Connections open now.
    public var current: Int { state.withLock { $0.total } }

    enum Refusal { case total, client }

    /// Registers one connection from `client`; a refusal (and nothing registered) when a limit is reached.
    func enter(client: String, limit: Int, perClient: Int) -> Refusal? {
        state.withLock { state in
            if state.total >= limit { return .total }
            let fromClient = state.perClient[client, default: 0]
            if fromClient >= perClient { return .client }
            state.total += 1
            state.perClient[client] = fromClient + 1
            return nil
        }
    }

    func leave(client: String) {
        state.withLock { state in
            state.total -= 1
            let remaining = state.perClient[client, default: 1] - 1
            state.perClient[client] = remaining > 0 ? remaining : nil
        }
    }
}

/// A global budget of bytes; thread-safe. ``reserve(_:)`` never blocks: it succeeds or says no.
public final class ByteBudget: Sendable {
    public let limit: Int
    private let used = Atomic<Int>(0)

    public init(limit: Int) { self.limit = limit }

    public var inUse: Int { used.load(ordering: .relaxed) }

    /// Takes `count` bytes from the budget; `false` (and nothing taken) when that would bring the
    /// bytes in use above `ceiling` (at most ``limit``).
    public func reserve(_ count: Int, ceiling: Int? = nil) -> Bool {
        guard count >= 0 else { return false }
        let limit = min(ceiling ?? self.limit, self.limit)
        var current = used.load(ordering: .relaxed)
        while true {
            let (sum, overflow) = current.addingReportingOverflow(count)
            if overflow || sum > limit { return false }
            let (exchanged, original) = used.compareExchange(expected: current, desired: sum, ordering: .relaxed)
            if exchanged { return true }
            current = original
        }
    }

    public func release(_ count: Int) { used.wrappingSubtract(count, ordering: .relaxed) }
}

/// Hummingbird's HTTP/1 channel with two guards in its pipeline: one before the HTTP decoder that
/// sees raw bytes (connection cap, idle and header timeouts) and one after it that sees request
/// parts (body deadline, closing a connection whose response was sent before its body ended).
struct GuardedHTTP1Channel: HTTPChannelHandler {
    typealias Value = HTTP1Channel.Value
    let inner: HTTP1Channel
    let limits: ConnectionLimits
    let connections: ConnectionCount
    let logger: Logger

    var responder: Responder { inner.responder }

    func setup(channel: any Channel, logger: Logger) -> EventLoopFuture<Value> {
        let state = GuardState(limits: limits, connections: connections, logger: self.logger)
        do {
            try channel.pipeline.syncOperations.addHandler(RawConnectionGuard(state: state), position: .first)
        } catch {
            return channel.eventLoop.makeFailedFuture(error)
        }
        // NIO runs `setup` on the channel's event loop, where the future completes too.
        return inner.setup(channel: channel, logger: logger).assumeIsolated().flatMapThrowing { value in
            let operations = channel.pipeline.syncOperations
            // Right after NIO's HTTP/1 decoder (the encoder comes before it): inbound it sees
            // decoded request parts, outbound the response parts on their way to the encoder.
            let decoder = try operations.handler(type: ByteToMessageHandler<HTTPRequestDecoder>.self)
            try operations.addHandler(RequestPartGuard(state: state), position: .after(decoder))
            return value
        }.nonisolated()
    }

    /// Serves the connection with its task preferring the channel's event loop (see
    /// ``EventLoopTaskExecutor``).
    func handle(value: Value, logger: Logger) async {
        await withTaskExecutorPreference(EventLoopTaskExecutor(loop: value.channel.eventLoop)) {
            await inner.handle(value: value, logger: logger)
        }
    }
}

extension HTTPServerBuilder {
    /// HTTP/1.1 with ``ConnectionLimits`` enforced on every connection.
    static func guardedHTTP1(limits: ConnectionLimits, connections: ConnectionCount, logger: Logger) -> HTTPServerBuilder {
        .init { responder in
            GuardedHTTP1Channel(
                inner: HTTP1Channel(responder: responder, configuration: .init()), limits: limits, connections: connections,
                logger: logger)
        }
    }
}

/// Per-connection timer state shared by the two guard handlers. Event-loop confined.
final class GuardState {
    enum Phase {
        /// Connected, nothing received yet: the idle timeout applies (a silent connection is an
        /// idle one; the per-client cap keeps one host from holding many).
        case fresh
        /// Between requests on a keep-alive connection: the idle timeout applies.
        case idle
        /// Bytes of a request head are arriving: the header timeout applies.
        case head
        /// The head is in; the body is arriving: the body deadline applies.
        case body
        /// The request is complete and being handled: a generous hard limit applies.
        case handling
        /// A response that ends the connection is being written: closed shortly whatever happens.
        case closing
    }

    /// A request whose handling takes longer than this has its connection closed (TutorCruncher
    /// gave up long before). Its work still finishes.
    static let handlingTimeout: Duration = .seconds(60)
    /// A closing response that cannot be written within this (a client that does not read) is dropped.
    static let closingTimeout: Duration = .seconds(2)
    /// Raw bytes a client may send without producing a request head or part (the HTTP decoder's
    /// own head limit is 80 KiB); beyond it the connection is closed.
    static let maximumUndecodedBytes = 128 << 10
    /// The slowest body rate a small body may arrive at: its deadline is 3 s (room for a lost
    /// segment's retransmission on a poor link) plus its size at this rate, capped by the body timeout.
    static let minimumBodyRate = 64 << 10

    let limits: ConnectionLimits
    let connections: ConnectionCount
    let logger: Logger
    var phase = Phase.fresh
    var client: String?
    /// When the current phase's time is up, and what closing then is counted as.
    var deadline = NIODeadline.distantFuture
    var reason = ""
    /// Checks `deadline` every ``tick``: entering a phase only stores a deadline, where scheduling
    /// and cancelling a timer per phase cost about a twentieth of a request's CPU.
    var ticker: Scheduled<Void>?
    /// How often the ticker looks: a quarter of the shortest timeout, between 50 ms and 500 ms (the
    /// most a timeout can overrun).
    let tick: TimeAmount
    var closeAfterResponse = false
    /// After a `CONNECT` or `Upgrade` request: the decoder stops parsing, so later bytes would
    /// pile up in its buffer. They are dropped and the connection ends after the response.
    var discardInput = false
    /// Raw bytes received since the decoder last produced a request part.
    var undecodedBytes = 0

    init(limits: ConnectionLimits, connections: ConnectionCount, logger: Logger) {
        self.limits = limits
        self.connections = connections
        self.logger = logger
        let shortest = [limits.headerTimeout, limits.bodyTimeout, limits.idleTimeout, Self.closingTimeout].min() ?? .seconds(2)
        self.tick = TimeAmount(min(max(shortest / 4, .milliseconds(50)), .milliseconds(500)))
    }

    func enter(_ phase: Phase, context: ChannelHandlerContext, timeout override: Duration? = nil) {
        self.phase = phase
        let timeout: Duration
        switch phase {
        case .fresh: (timeout, reason) = (limits.idleTimeout, "first_byte_timeout")
        case .idle: (timeout, reason) = (limits.idleTimeout, "idle_timeout")
        case .head: (timeout, reason) = (limits.headerTimeout, "header_timeout")
        case .body: (timeout, reason) = (override ?? limits.bodyTimeout, "body_timeout")
        case .handling: (timeout, reason) = (Self.handlingTimeout, "handling_timeout")
        case .closing: (timeout, reason) = (Self.closingTimeout, "closing_timeout")
        }
        deadline = .now() + TimeAmount(timeout)
        if ticker == nil { scheduleCheck(on: context.eventLoop.assumeIsolatedUnsafeUnchecked(), channel: context.channel) }
    }

    private func scheduleCheck(on loop: NIOIsolatedEventLoop, channel: any Channel) {
        ticker = loop.scheduleTask(in: tick) { [weak self] in
            guard let self else { return }
            self.ticker = nil
            if NIODeadline.now() >= self.deadline {
                self.deadline = .distantFuture
                Self.close(channel, reason: self.reason, logger: self.logger)
            } else {
                self.scheduleCheck(on: loop, channel: channel)
            }
        }
    }

    static func close(_ channel: any Channel, reason: String, logger: Logger) {
        Counter(label: "tcbridge_connections_closed_total", dimensions: [("reason", reason)]).increment()
        logger.debug("closing connection", metadata: ["reason": "\(reason)", "peer": "\(channel.remoteAddress.map { "\($0)" } ?? "-")"])
        channel.close(promise: nil)
    }

    func stop() {
        ticker?.cancel()
        ticker = nil
        if let client {
            self.client = nil
            connections.leave(client: client)
        }
    }
}

/// First in the pipeline: sees raw bytes. Enforces the connection cap and the idle and header timeouts.
final class RawConnectionGuard: ChannelDuplexHandler, RemovableChannelHandler {
    typealias InboundIn = ByteBuffer
    typealias InboundOut = ByteBuffer
    typealias OutboundIn = ByteBuffer
    typealias OutboundOut = ByteBuffer

    private static let overloaded = Array(
        "HTTP/1.1 503 Service Unavailable\r\nRetry-After: 1\r\nConnection: close\r\nContent-Length: 0\r\n\r\n".utf8)

    let state: GuardState
    private var refused = false
    private var answered = false


    init(state: GuardState) { self.state = state }

    // Hummingbird sets the pipeline up before the accepted channel is active, and channelActive
    // does not always pass through handlers added then: count and time the connection from here.
    func handlerAdded(context: ChannelHandlerContext) {
        let client = context.channel.remoteAddress?.ipAddress ?? "unknown"
        if let refusal = state.connections.enter(
            client: client, limit: state.limits.maxConnections, perClient: state.limits.maxConnectionsPerClient)
        {
            refused = true
            let reason = refusal == .total ? "too_many_connections" : "too_many_connections_from_client"
            Counter(label: "tcbridge_connections_closed_total", dimensions: [("reason", reason)]).increment()
            state.logger.warning(
                "connection limit reached; refusing a connection",
                metadata: [
                    "limit": "\(refusal == .total ? state.limits.maxConnections : state.limits.maxConnectionsPerClient)",
                    "scope": "\(refusal == .total ? "all clients" : "one client")",
                ])
            refuse(context: context)
            return
        }
        state.client = client
        state.enter(.fresh, context: context)
    }

    func channelActive(context: ChannelHandlerContext) {
        if refused { refuse(context: context) }
        context.fireChannelActive()
    }

    /// Answers 503 and closes; waits (briefly) for the channel to become active to do so.
    private func refuse(context: ChannelHandlerContext, attempt: Int = 0) {
        guard !answered else { return }
        guard context.channel.isActive || attempt >= 100 else {
            context.eventLoop.assumeIsolatedUnsafeUnchecked().scheduleTask(in: .milliseconds(10)) {
                self.refuse(context: context, attempt: attempt + 1)
            }
            return
        }
        answered = true
        let buffer = context.channel.allocator.buffer(bytes: Self.overloaded)
        context.writeAndFlush(wrapOutboundOut(buffer)).assumeIsolated().whenComplete { _ in context.close(promise: nil) }
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        guard state.client != nil else {  // refused connection: ignore what it sends, answer once
            refuse(context: context)
            return
        }
        if state.discardInput { return }
        if state.phase == .idle || state.phase == .fresh { state.enter(.head, context: context) }
        if state.phase == .head {
            state.undecodedBytes += unwrapInboundIn(data).readableBytes
            if state.undecodedBytes > GuardState.maximumUndecodedBytes {
                GuardState.close(context.channel, reason: "head_too_large", logger: state.logger)
                return
            }
        }
        context.fireChannelRead(data)
    }

    func channelInactive(context: ChannelHandlerContext) {
        state.stop()
        context.fireChannelInactive()
    }

    func handlerRemoved(context: ChannelHandlerContext) {
        state.stop()
    }
}

/// After the HTTP decoder: sees request heads and ends, and response ends.
final class RequestPartGuard: ChannelDuplexHandler, RemovableChannelHandler {
    typealias InboundIn = HTTPServerRequestPart
    typealias InboundOut = HTTPServerRequestPart
    typealias OutboundIn = HTTPServerResponsePart
    typealias OutboundOut = HTTPServerResponsePart

    let state: GuardState

    init(state: GuardState) { self.state = state }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        state.undecodedBytes = 0
        switch unwrapInboundIn(data) {
        case .head(let head):
            if head.method == .CONNECT || head.headers.contains(name: "upgrade") {
                // The decoder stops parsing after these: drop whatever follows and end the
                // connection after the answer.
                state.discardInput = true
                state.closeAfterResponse = true
            }
            // A small body gets a deadline to match: 3 s plus its size at the minimum rate.
            var deadline = state.limits.bodyTimeout
            if let length = head.headers.first(name: "content-length").flatMap({ Int($0) }), length >= 0 {
                deadline = min(deadline, .seconds(3) + .milliseconds(Int64(length / (GuardState.minimumBodyRate / 1000))))
            }
            state.enter(.body, context: context, timeout: deadline)
        case .body: break
        case .end: state.enter(.handling, context: context)
        }
        context.fireChannelRead(data)
    }

    func write(context: ChannelHandlerContext, data: NIOAny, promise: EventLoopPromise<Void>?) {
        switch unwrapOutboundIn(data) {
        case .head(let head):
            if head.headers[canonicalForm: "connection"].contains(where: { $0.lowercased() == "close" }) {
                state.closeAfterResponse = true
            }
            context.write(data, promise: promise)
            return
        case .body:
            context.write(data, promise: promise)
            return
        case .end:
            break
        }
        // A response that says `Connection: close`, or one sent before its request's body ended
        // (a rejection that never read the body): close rather than drain an unknown amount.
        if state.closeAfterResponse || state.phase == .body || state.phase == .head {
            let future = context.writeAndFlush(data)
            future.cascade(to: promise)
            future.assumeIsolated().whenComplete { _ in context.close(promise: nil) }
            // A client that does not read cannot keep the connection: closed shortly regardless.
            state.enter(.closing, context: context)
            return
        }
        context.write(data, promise: promise)
        state.enter(.idle, context: context)
    }
}
