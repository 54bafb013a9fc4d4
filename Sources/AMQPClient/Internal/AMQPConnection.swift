import CRabbitMQ
import DurationUnits

#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

/// One rabbitmq-c connection with one channel.
///
/// Threading: not thread-safe. It is created and destroyed by its owner thread, and used by one
/// thread at a time: the owner, or (the publisher's) a caller holding the owner's gate while the
/// owner waits (see ``AMQPPublisher/publish(_:)``). Every call may block its thread on the socket.
/// Errors: every failure is thrown as ``AMQPError``; after `.connectionLost`, `.channelClosed` or
/// `.protocolError` the connection is unusable and must be discarded.
final class AMQPConnection {
    /// Something the broker sent that the owner must act on.
    enum Event {
        case ack(deliveryTag: UInt64, multiple: Bool)
        case nack(deliveryTag: UInt64, multiple: Bool)
        case returned(replyCode: UInt16, replyText: String, message: AMQPInboundMessage)
        case delivery(deliveryTag: UInt64, message: AMQPInboundMessage)
        case blocked(reason: String)
        case unblocked
        case consumerCancelled
    }

    static let channel: amqp_channel_t = 1

    let configuration: AMQPConnectionConfiguration
    private let state: amqp_connection_state_t
    private var destroyed = false
    /// A read inside rabbitmq-c failed. Its input state may then be inconsistent: after a frame
    /// larger than the frame size (which RabbitMQ sends for a message whose properties outgrew the
    /// frame, e.g. once dead-lettering added `x-death`) it still expects that frame, in a 7-byte
    /// buffer, and the next read writes past it. So nothing reads from the connection again; every
    /// call that would throws, and ``close()`` only releases it.
    private var unreadable: String?

    /// Opens the socket, logs in, opens channel 1. Blocks the calling thread up to the configured timeouts.
    init(configuration: AMQPConnectionConfiguration) throws(AMQPError) {
        guard let state = amqp_new_connection() else { throw AMQPError(.connectionFailed, "out of memory") }
        self.configuration = configuration
        self.state = state
        do {
            try open()
        } catch {
            destroy()
            throw error
        }
    }

    deinit { destroy() }

    /// The socket's file descriptor, for `poll(2)` by the owner.
    var fileDescriptor: Int32 { amqp_get_sockfd(state) }
    /// The negotiated frame size in bytes.
    var frameSize: Int { Int(amqp_get_frame_max(state)) }

    /// `true` when rabbitmq-c holds unread bytes or decoded frames, so `poll` on the socket would miss them.
    var hasBufferedInput: Bool { amqp_data_in_buffer(state) != 0 || amqp_frames_enqueued(state) != 0 }

    private func open() throws(AMQPError) {
        let socket: OpaquePointer?
        if let tls = configuration.tls {
            socket = amqp_ssl_socket_new(state)
            guard let socket else { throw AMQPError(.connectionFailed, "cannot create TLS socket") }
            if amqp_ssl_socket_set_ssl_versions(socket, AMQP_TLSv1_2, AMQP_TLSvLATEST) != AMQP_STATUS_OK.rawValue {
                throw AMQPError(.connectionFailed, "cannot require TLS 1.2+")
            }
            if let ca = tls.caCertificatePath {
                let status = amqp_ssl_socket_set_cacert(socket, ca)
                if status != AMQP_STATUS_OK.rawValue { throw AMQPError(.connectionFailed, "cannot load CA file \(ca): \(errorString(status))") }
            }
            switch (tls.clientCertificatePath, tls.clientKeyPath) {
            case let (cert?, key?):
                let status = amqp_ssl_socket_set_key(socket, cert, key)
                if status != AMQP_STATUS_OK.rawValue {
                    throw AMQPError(.connectionFailed, "cannot load client certificate \(cert) with key \(key): \(errorString(status))")
                }
            case (nil, nil):
                break
            default:
                throw AMQPError(.connectionFailed, "TLS client certificate and key must be given together")
            }
            amqp_ssl_socket_set_verify_peer(socket, tls.verifyPeer ? 1 : 0)
            amqp_ssl_socket_set_verify_hostname(socket, tls.verifyHostname ? 1 : 0)
        } else {
            socket = amqp_tcp_socket_new(state)
            guard socket != nil else { throw AMQPError(.connectionFailed, "cannot create TCP socket") }
        }
        var connectTimeout = timeval(configuration.connectTimeout)
        let status = amqp_socket_open_noblock(socket, configuration.host, try Self.validatedPort(configuration.port), &connectTimeout)
        guard status == AMQP_STATUS_OK.rawValue else {
            throw AMQPError(.connectionFailed, "cannot connect to \(configuration.host):\(configuration.port): \(openFailureText(status))")
        }
        var handshakeTimeout = timeval(configuration.connectTimeout)
        amqp_set_handshake_timeout(state, &handshakeTimeout)
        var rpcTimeout = timeval(configuration.rpcTimeout)
        amqp_set_rpc_timeout(state, &rpcTimeout)

        let heartbeatSeconds = Self.heartbeatSeconds(configuration.heartbeat)
        let reply = withClientProperties { properties in
            var properties = properties
            return tcb_login_plain(
                state, configuration.virtualHost, 0, Int32(AMQP_DEFAULT_FRAME_SIZE), heartbeatSeconds,
                &properties, configuration.username, configuration.password)
        }
        if let tls = configuration.tls, reply.reply_type == AMQP_RESPONSE_LIBRARY_EXCEPTION,
            reply.library_error == AMQP_STATUS_SSL_ERROR.rawValue
        {
            // With TLS 1.3 a broker that refuses the client's certificate (or its absence) says so
            // only after the handshake, so the first read fails.
            let certificate = tls.clientCertificatePath.map { "did not accept client certificate \($0)" }
                ?? "requires a client certificate and none is configured"
            throw AMQPError(
                .connectionFailed,
                "login to \(configuration.host):\(configuration.port): TLS: the broker closed the connection after the handshake;"
                    + " it probably \(certificate) (\(errorString(reply.library_error)))")
        }
        try check(reply, kind: .connectionFailed, "login to \(configuration.host):\(configuration.port)")
        amqp_channel_open(state, Self.channel)
        try check(amqp_get_rpc_reply(state), kind: .connectionFailed, "channel.open")
    }

    // MARK: Topology and channel modes (synchronous RPCs, bounded by rpcTimeout)

    /// What a declaration did: declared (created, or found as declared), or found an existing
    /// exchange or queue with other properties and used it as it is (modes `declareOrUseExisting`).
    enum DeclareOutcome { case declared, usedExisting(reason: String) }
    typealias ExchangeOutcome = DeclareOutcome

    @discardableResult
    func declare(_ exchange: AMQPExchangeDeclaration) throws(AMQPError) -> ExchangeOutcome {
        try ensureReadable()
        if exchange.mode == .declareIfMissing {
            withBytes(exchange.name) { name in
                withBytes(exchange.kind.rawValue) { kind in
                    _ = amqp_exchange_declare(state, Self.channel, name, kind, 1, 0, 0, 0, amqp_table_t(num_entries: 0, entries: nil))
                }
            }
            do {
                try check(amqp_get_rpc_reply(state), kind: .channelClosed, "exchange.declare (passive) \(exchange.name)")
                return .usedExisting(reason: "exists")
            } catch where error.replyCode == 404 {
                // NOT_FOUND closed the channel: reopen it and create the exchange.
                amqp_channel_open(state, Self.channel)
                try check(amqp_get_rpc_reply(state), kind: .connectionLost, "channel.open")
            }
        }
        let arguments = exchange.arguments.sorted { $0.key < $1.key }.map { ($0.key, $0.value) }
        FieldTable.with(arguments) { table in
            withBytes(exchange.name) { name in
                withBytes(exchange.kind.rawValue) { kind in
                    _ = amqp_exchange_declare(state, Self.channel, name, kind, 0, exchange.durable ? 1 : 0, 0, 0, table)
                }
            }
        }
        do {
            try check(amqp_get_rpc_reply(state), kind: .channelClosed, "exchange.declare \(exchange.name)")
        } catch where error.replyCode == 406 && exchange.mode == .declareOrUseExisting {
            // PRECONDITION_FAILED: it exists with other properties. Reopen the channel and use it as it is.
            amqp_channel_open(state, Self.channel)
            try check(amqp_get_rpc_reply(state), kind: .connectionLost, "channel.open")
            return .usedExisting(reason: error.message)
        }
        return .declared
    }

    /// Declares the queue and its bindings.
    /// - Throws: `.channelClosed` with the broker's reply code when it refuses the declaration
    ///   (406 for a mismatch, unless the mode is `declareOrUseExisting`), `.connectionLost` on I/O errors.
    @discardableResult
    func declare(_ queue: AMQPQueueDeclaration) throws(AMQPError) -> DeclareOutcome {
        try ensureReadable()
        let arguments = queue.arguments.sorted { $0.key < $1.key }.map { ($0.key, $0.value) }
        _ = FieldTable.with(arguments) { table in
            withBytes(queue.name) { name in
                amqp_queue_declare(
                    state, Self.channel, name, 0, queue.durable ? 1 : 0, queue.exclusive ? 1 : 0,
                    queue.autoDelete ? 1 : 0, table)
            }
        }
        var outcome = DeclareOutcome.declared
        do {
            try check(amqp_get_rpc_reply(state), kind: .channelClosed, "queue.declare \(queue.name)")
        } catch where error.replyCode == 406 && queue.mode == .declareOrUseExisting {
            // PRECONDITION_FAILED: it exists with other arguments. Reopen the channel, check it is
            // there, and use it as it is.
            amqp_channel_open(state, Self.channel)
            try check(amqp_get_rpc_reply(state), kind: .connectionLost, "channel.open")
            _ = try declarePassive(queue: queue.name)
            outcome = .usedExisting(reason: error.message)
        }
        for binding in queue.bindings {
            withBytes(queue.name) { name in
                withBytes(binding.exchange) { exchange in
                    withBytes(binding.routingKey) { key in
                        _ = amqp_queue_bind(state, Self.channel, name, exchange, key, amqp_table_t(num_entries: 0, entries: nil))
                    }
                }
            }
            try check(amqp_get_rpc_reply(state), kind: .channelClosed, "queue.bind \(queue.name) to \(binding.exchange)")
        }
        return outcome
    }

    /// Checks that a queue exists (`passive` declare); returns its ready and consumer counts.
    func declarePassive(queue: String) throws(AMQPError) -> (messageCount: UInt32, consumerCount: UInt32) {
        try ensureReadable()
        let ok = withBytes(queue) { name in
            amqp_queue_declare(state, Self.channel, name, 1, 0, 0, 0, amqp_table_t(num_entries: 0, entries: nil))
        }
        try check(amqp_get_rpc_reply(state), kind: .channelClosed, "queue.declare (passive) \(queue)")
        return (ok?.pointee.message_count ?? 0, ok?.pointee.consumer_count ?? 0)
    }

    /// Deletes a queue; returns the number of messages it held.
    @discardableResult
    func deleteQueue(_ name: String) throws(AMQPError) -> UInt32 {
        try ensureReadable()
        let ok = withBytes(name) { amqp_queue_delete(state, Self.channel, $0, 0, 0) }
        try check(amqp_get_rpc_reply(state), kind: .channelClosed, "queue.delete \(name)")
        return ok?.pointee.message_count ?? 0
    }

    func enablePublisherConfirms() throws(AMQPError) {
        try ensureReadable()
        amqp_confirm_select(state, Self.channel)
        try check(amqp_get_rpc_reply(state), kind: .channelClosed, "confirm.select")
    }

    func setPrefetch(_ count: UInt16) throws(AMQPError) {
        try ensureReadable()
        amqp_basic_qos(state, Self.channel, 0, count, 0)
        try check(amqp_get_rpc_reply(state), kind: .channelClosed, "basic.qos")
    }

    /// Cancels a subscription (`basic.cancel`); deliveries already sent may still arrive before the reply.
    func cancel(consumerTag: String) throws(AMQPError) {
        try ensureReadable()
        withBytes(consumerTag) { tag in _ = amqp_basic_cancel(state, Self.channel, tag) }
        try check(amqp_get_rpc_reply(state), kind: .channelClosed, "basic.cancel")
    }

    func consume(queue: String, consumerTag: String) throws(AMQPError) {
        try ensureReadable()
        withBytes(queue) { queueBytes in
            withBytes(consumerTag) { tag in
                _ = amqp_basic_consume(state, Self.channel, queueBytes, tag, 0, 0, 0, amqp_table_t(num_entries: 0, entries: nil))
            }
        }
        try check(amqp_get_rpc_reply(state), kind: .channelClosed, "basic.consume \(queue)")
    }

    // MARK: Asynchronous methods (no reply)

    /// Sends `basic.publish` with its header and body frames. May block while the socket is full.
    /// A message that cannot travel (``AMQPOutboundMessage/encodingProblem(frameSize:)``) is refused
    /// with `.unencodable` before anything is sent, as ``PublishFrames`` refuses it: rabbitmq-c would
    /// send a header name over 255 bytes cut short, and fail on other problems after the method
    /// frame, leaving the connection unusable.
    func publish(_ message: AMQPOutboundMessage) throws(AMQPError) {
        try ensureReadable()  // rabbitmq-c reads here too, when a heartbeat is due
        if let problem = message.encodingProblem(frameSize: frameSize) { throw AMQPError(.unencodable, problem) }
        let status = withProperties(message.properties) { properties in
            withBytes(message.exchange) { exchange in
                withBytes(message.routingKey) { routingKey in
                    message.body.withUnsafeBytes { raw in
                        let body = amqp_bytes_t(len: raw.count, bytes: UnsafeMutableRawPointer(mutating: raw.baseAddress))
                        return withUnsafePointer(to: properties) { props in
                            amqp_basic_publish(state, Self.channel, exchange, routingKey, message.mandatory ? 1 : 0, 0, props, body)
                        }
                    }
                }
            }
        }
        guard status == AMQP_STATUS_OK.rawValue else { throw AMQPError(.connectionLost, "publish: \(readFailed(status))") }
    }

    /// `true` when ``sendFrames(_:)`` may write frames straight to the socket: plain TCP. Over TLS every
    /// byte must go through rabbitmq-c's TLS socket, so messages go one by one through ``publish(_:)``.
    var sendsFramesDirectly: Bool { configuration.tls == nil }

    /// Writes `frames` (whole frames, from ``PublishFrames``) to the socket, all of them, waiting
    /// while its send buffer is full. rabbitmq-c writes nothing in between: it only writes when
    /// this connection's one user calls it. Throws `.connectionLost` when the socket fails (a frame
    /// may then be cut off: the connection is unusable).
    /// `onProgress` runs after every `send(2)` that took bytes.
    func sendFrames(_ frames: [UInt8], onProgress: () -> Void = {}) throws(AMQPError) {
        let socket = fileDescriptor
        let failure: Int32? = frames.withUnsafeBytes { raw in
            guard let base = raw.baseAddress else { return nil }
            var offset = 0
            while offset < raw.count {
                let sent = send(socket, base + offset, raw.count - offset, Int32(MSG_NOSIGNAL))
                if sent > 0 {
                    offset += sent
                    onProgress()
                    continue
                }
                let code = sent == 0 ? EPIPE : errno
                switch code {
                case EINTR:
                    continue
                case EAGAIN, EWOULDBLOCK:
                    // rabbitmq-c keeps its sockets non-blocking. A stalled broker is the write
                    // watchdog's to handle: it shuts the socket down, and the next send fails.
                    var writable = pollfd(fd: socket, events: Int16(POLLOUT), revents: 0)
                    _ = poll(&writable, 1, -1)
                default:
                    return code
                }
            }
            return nil
        }
        if let failure { throw AMQPError(.connectionLost, "publish: \(String(cString: strerror(failure)))") }
    }

    // `ack` and `nack` read too: rabbitmq-c decodes what is buffered when a send waits past a heartbeat.

    func ack(_ deliveryTag: UInt64, multiple: Bool = false) throws(AMQPError) {
        try ensureReadable()
        let status = amqp_basic_ack(state, Self.channel, deliveryTag, multiple ? 1 : 0)
        guard status == AMQP_STATUS_OK.rawValue else { throw AMQPError(.connectionLost, "ack: \(readFailed(status))") }
    }

    func nack(_ deliveryTag: UInt64, requeue: Bool) throws(AMQPError) {
        try ensureReadable()
        let status = amqp_basic_nack(state, Self.channel, deliveryTag, 0, requeue ? 1 : 0)
        guard status == AMQP_STATUS_OK.rawValue else { throw AMQPError(.connectionLost, "nack: \(readFailed(status))") }
    }

    /// `basic.get` with manual acknowledgement: the next message of `queue` and its delivery tag, or
    /// `nil` when the queue is empty. Settle it with ``ack(_:multiple:)`` or ``nack(_:requeue:)``;
    /// closing the channel requeues whatever is unsettled.
    func get(queue: String) throws(AMQPError) -> (deliveryTag: UInt64, message: AMQPInboundMessage)? {
        try ensureReadable()
        let reply = withBytes(queue) { amqp_basic_get(state, Self.channel, $0, 0) }
        try check(reply, kind: .channelClosed, "basic.get \(queue)")
        guard reply.reply.id == AMQP_BASIC_GET_OK_METHOD, let decoded = reply.reply.decoded else { return nil }
        let ok = decoded.assumingMemoryBound(to: amqp_basic_get_ok_t.self).pointee
        let (properties, body) = try readContent(channel: Self.channel)
        return (
            ok.delivery_tag,
            AMQPInboundMessage(
                exchange: String(amqpBytes: ok.exchange), routingKey: String(amqpBytes: ok.routing_key), properties: properties, body: body,
                redelivered: ok.redelivered != 0)
        )
    }

    /// Waits (up to the RPC timeout) for the broker's confirm of the last publish; a nack, a
    /// return or silence throws. For one-off tools, not the publisher's pipeline.
    func awaitConfirm() throws(AMQPError) {
        while true {
            guard let event = try nextEvent(timeout: configuration.rpcTimeout) else {
                throw AMQPError(.confirmTimeout, "no confirm within \(configuration.rpcTimeout)")
            }
            switch event {
            case .ack: return
            case .nack: throw AMQPError(.nacked, "broker rejected the message (basic.nack)")
            case .returned(let code, let text, _):
                throw AMQPError(.nacked, "broker returned the message as unroutable: \(code) \(text)", replyCode: code)
            default: continue
            }
        }
    }

    // MARK: Reading

    /// Reads the next frame that matters, waiting at most `timeout` (zero: only what is buffered or
    /// readable now). Returns `nil` on timeout. Services heartbeats as a side effect, so the owner must
    /// call it regularly even when idle.
    /// - Throws: `.connectionLost` on socket errors, heartbeat timeout or a broker `connection.close`;
    ///   `.channelClosed` on a broker `channel.close`.
    func nextEvent(timeout: Duration) throws(AMQPError) -> Event? {
        try ensureReadable()
        defer { amqp_maybe_release_buffers(state) }
        while true {
            var frame = amqp_frame_t()
            var tv = timeval(timeout)
            let status = amqp_simple_wait_frame_noblock(state, &frame, &tv)
            if status == AMQP_STATUS_TIMEOUT.rawValue { return nil }
            guard status == AMQP_STATUS_OK.rawValue else {
                throw AMQPError(.connectionLost, readFailed(status))
            }
            guard frame.frame_type == UInt8(AMQP_FRAME_METHOD) else { continue }  // stray content frames
            let method = frame.payload.method
            switch method.id {
            case AMQP_BASIC_ACK_METHOD:
                let ack = method.decoded.assumingMemoryBound(to: amqp_basic_ack_t.self).pointee
                return .ack(deliveryTag: ack.delivery_tag, multiple: ack.multiple != 0)
            case AMQP_BASIC_NACK_METHOD:
                let nack = method.decoded.assumingMemoryBound(to: amqp_basic_nack_t.self).pointee
                return .nack(deliveryTag: nack.delivery_tag, multiple: nack.multiple != 0)
            case AMQP_BASIC_RETURN_METHOD:
                let returned = method.decoded.assumingMemoryBound(to: amqp_basic_return_t.self).pointee
                let exchange = String(amqpBytes: returned.exchange)
                let routingKey = String(amqpBytes: returned.routing_key)
                let replyText = String(amqpBytes: returned.reply_text)
                let (properties, body) = try readContent(channel: frame.channel)
                return .returned(
                    replyCode: returned.reply_code, replyText: replyText,
                    message: AMQPInboundMessage(
                        exchange: exchange, routingKey: routingKey, properties: properties, body: body, redelivered: false))
            case AMQP_BASIC_DELIVER_METHOD:
                let deliver = method.decoded.assumingMemoryBound(to: amqp_basic_deliver_t.self).pointee
                let exchange = String(amqpBytes: deliver.exchange)
                let routingKey = String(amqpBytes: deliver.routing_key)
                let (properties, body) = try readContent(channel: frame.channel)
                return .delivery(
                    deliveryTag: deliver.delivery_tag,
                    message: AMQPInboundMessage(
                        exchange: exchange, routingKey: routingKey, properties: properties, body: body,
                        redelivered: deliver.redelivered != 0))
            case AMQP_CONNECTION_BLOCKED_METHOD:
                let blocked = method.decoded.assumingMemoryBound(to: amqp_connection_blocked_t.self).pointee
                return .blocked(reason: String(amqpBytes: blocked.reason))
            case AMQP_CONNECTION_UNBLOCKED_METHOD:
                return .unblocked
            case AMQP_BASIC_CANCEL_METHOD:
                return .consumerCancelled
            case AMQP_CHANNEL_CLOSE_METHOD:
                let close = method.decoded.assumingMemoryBound(to: amqp_channel_close_t.self).pointee
                let text = String(amqpBytes: close.reply_text)
                var ok = amqp_channel_close_ok_t()
                sent(amqp_send_method(state, frame.channel, AMQP_CHANNEL_CLOSE_OK_METHOD, &ok))
                throw AMQPError(.channelClosed, "broker closed the channel: \(close.reply_code) \(text)", replyCode: close.reply_code)
            case AMQP_CONNECTION_CLOSE_METHOD:
                let close = method.decoded.assumingMemoryBound(to: amqp_connection_close_t.self).pointee
                let text = String(amqpBytes: close.reply_text)
                var ok = amqp_connection_close_ok_t()
                sent(amqp_send_method(state, 0, AMQP_CONNECTION_CLOSE_OK_METHOD, &ok))
                throw AMQPError(.connectionLost, "broker closed the connection: \(close.reply_code) \(text)", replyCode: close.reply_code)
            default:
                continue
            }
        }
    }

    /// Reads the header and body frames that follow `basic.deliver` / `basic.return`.
    private func readContent(channel: amqp_channel_t) throws(AMQPError) -> (AMQPProperties, [UInt8]) {
        try ensureReadable()
        var message = amqp_message_t()
        let reply = amqp_read_message(state, channel, &message, 0)
        try check(reply, kind: .connectionLost, "reading message content")
        defer { amqp_destroy_message(&message) }
        return (AMQPProperties(message.properties), [UInt8](amqpBytes: message.body))
    }

    // MARK: Closing

    /// Sends `connection.close`, waits (up to rpcTimeout) for the broker's `close-ok`, and releases
    /// the handle. Returns whether the broker answered: only then has it applied everything sent
    /// before (acks included). Idempotent (`false` once closed).
    @discardableResult
    func close() -> Bool {
        guard !destroyed else { return false }
        guard unreadable == nil else {
            destroy()
            return false
        }
        let reply = amqp_connection_close(state, AMQP_REPLY_SUCCESS)
        destroy()
        return reply.reply_type == AMQP_RESPONSE_NORMAL
    }

    /// Holds back partial TCP segments (`TCP_CORK`) while `true`: the frames of several publishes
    /// written in a row then leave in full segments, and the broker reads them in fewer, larger
    /// chunks. Turning it off sends what is queued at once. Harmless where unsupported.
    func setCorked(_ corked: Bool) {
        #if os(Linux)
        var value: Int32 = corked ? 1 : 0
        _ = setsockopt(fileDescriptor, Int32(IPPROTO_TCP), TCP_CORK, &value, socklen_t(MemoryLayout<Int32>.size))
        #endif
    }

    /// How many bytes a write can hand the kernel now without blocking, or `nil` when the socket is
    /// not quiet: bytes the broker has not acknowledged, or input waiting (in rabbitmq-c's buffers
    /// or the kernel's) that the owner must read first. Three system calls; Linux only (`nil` elsewhere).
    var quietSendCapacity: Int? {
        #if os(Linux)
        guard !hasBufferedInput else { return nil }
        let capacity = tcb_quiet_send_capacity(fileDescriptor)
        return capacity >= 0 ? Int(capacity) : nil
        #else
        return nil
        #endif
    }

    /// Shuts the socket down from any thread, so a call blocked on it returns with an error.
    /// The only method that may be called without holding the connection (see the type's threading note).
    static func abortSocket(fileDescriptor: Int32) {
        if fileDescriptor >= 0 { _ = shutdown(fileDescriptor, Int32(SHUT_RDWR)) }
    }

    private func destroy() {
        guard !destroyed else { return }
        destroyed = true
        amqp_destroy_connection(state)
    }

    // MARK: Helpers

    /// Throws when an earlier read failed (see `unreadable`): call before anything that reads.
    private func ensureReadable() throws(AMQPError) {
        if let unreadable { throw AMQPError(.connectionLost, "connection unusable after a failed read (\(unreadable))") }
    }

    /// A reply the broker asked for (`close-ok`) that could not be sent: the connection is unusable
    /// (the caller is already throwing for the close itself).
    private func sent(_ status: Int32) {
        if status != AMQP_STATUS_OK.rawValue { _ = readFailed(status) }
    }

    /// Records a failed call into rabbitmq-c's I/O (see `unreadable`) and returns its description.
    private func readFailed(_ status: Int32) -> String {
        var text = errorString(status)
        if status == AMQP_STATUS_BAD_AMQP_DATA.rawValue {
            text += " (a frame larger than the frame size of \(frameSize) bytes, or malformed: a message whose properties outgrew the frame cannot be read)"
        }
        unreadable = unreadable ?? text
        return text
    }

    private func check(_ reply: amqp_rpc_reply_t, kind: AMQPError.Kind, _ context: String) throws(AMQPError) {
        switch reply.reply_type {
        case AMQP_RESPONSE_NORMAL:
            return
        case AMQP_RESPONSE_LIBRARY_EXCEPTION:
            let kind: AMQPError.Kind = kind == .channelClosed ? .connectionLost : kind
            throw AMQPError(kind, "\(context): \(readFailed(reply.library_error))")
        case AMQP_RESPONSE_SERVER_EXCEPTION:
            switch reply.reply.id {
            case AMQP_CONNECTION_CLOSE_METHOD:
                let close = reply.reply.decoded.assumingMemoryBound(to: amqp_connection_close_t.self).pointee
                throw AMQPError(
                    kind == .connectionFailed ? .connectionFailed : .connectionLost,
                    "\(context): broker closed the connection: \(close.reply_code) \(String(amqpBytes: close.reply_text))",
                    replyCode: close.reply_code)
            case AMQP_CHANNEL_CLOSE_METHOD:
                let close = reply.reply.decoded.assumingMemoryBound(to: amqp_channel_close_t.self).pointee
                let text = String(amqpBytes: close.reply_text)
                var ok = amqp_channel_close_ok_t()
                sent(amqp_send_method(state, Self.channel, AMQP_CHANNEL_CLOSE_OK_METHOD, &ok))
                throw AMQPError(
                    kind == .connectionFailed ? .connectionFailed : .channelClosed,
                    "\(context): broker closed the channel: \(close.reply_code) \(text)", replyCode: close.reply_code)
            default:
                throw AMQPError(.protocolError, "\(context): unexpected server reply \(reply.reply.id)")
            }
        default:
            throw AMQPError(kind, "\(context): no reply")
        }
    }

    private func withClientProperties<R>(_ body: (amqp_table_t) -> R) -> R {
        var arena = StringArena()
        defer { arena.free() }
        let capabilityNames = [
            "publisher_confirms", "connection.blocked", "consumer_cancel_notify", "authentication_failure_close",
            "basic.nack",
        ]
        var capabilities = capabilityNames.map { name in
            var value = amqp_field_value_t()
            value.kind = tcb_kind_boolean()
            value.value.boolean = 1
            return amqp_table_entry_t(key: arena.bytes(name), value: value)
        }
        return capabilities.withUnsafeMutableBufferPointer { capabilityBuffer in
            var capabilityValue = amqp_field_value_t()
            capabilityValue.kind = tcb_kind_table()
            capabilityValue.value.table = amqp_table_t(num_entries: Int32(capabilityBuffer.count), entries: capabilityBuffer.baseAddress)
            func string(_ key: String, _ text: String) -> amqp_table_entry_t {
                var value = amqp_field_value_t()
                value.kind = tcb_kind_utf8()
                value.value.bytes = arena.bytes(text)
                return amqp_table_entry_t(key: arena.bytes(key), value: value)
            }
            var entries = [
                amqp_table_entry_t(key: arena.bytes("capabilities"), value: capabilityValue),
                string("product", "tc-bridge"),
                string("connection_name", configuration.connectionName),
            ]
            return entries.withUnsafeMutableBufferPointer { buffer in
                body(amqp_table_t(num_entries: Int32(buffer.count), entries: buffer.baseAddress))
            }
        }
    }
}

// MARK: - Conversions

func errorString(_ status: Int32) -> String {
    String(cString: amqp_error_string2(status))
}

extension AMQPConnection {
    /// Why opening the socket failed; TLS verification failures say what to check.
    fileprivate func openFailureText(_ status: Int32) -> String {
        switch status {
        case AMQP_STATUS_SSL_PEER_VERIFY_FAILED.rawValue:
            let ca = configuration.tls?.caCertificatePath.map { "CA file \($0)" } ?? "no CA file configured"
            return "TLS: broker certificate not trusted (peer certificate verification failed against \(ca))"
        case AMQP_STATUS_SSL_HOSTNAME_VERIFY_FAILED.rawValue:
            // rabbitmq-c 0.11 matches DNS names only, never IP addresses.
            return "TLS: broker certificate does not name host \(configuration.host) (host name verification failed;"
                + " connect with a DNS name listed in the certificate, not an IP address)"
        case AMQP_STATUS_SSL_CONNECTION_FAILED.rawValue:
            return "TLS handshake failed (is this the broker's TLS port?): \(errorString(status))"
        default:
            return errorString(status)
        }
    }
}

/// Calls `body` with bytes that stay valid for the whole call (rabbitmq-c copies what it keeps).
func withBytes<R>(_ text: String, _ body: (amqp_bytes_t) -> R) -> R {
    var text = text
    return text.withUTF8 { buffer in
        body(amqp_bytes_t(len: buffer.count, bytes: UnsafeMutableRawPointer(mutating: buffer.baseAddress)))
    }
}

/// `properties` as rabbitmq-c's struct, valid inside `body` (internal for the encoding tests).
func withProperties<R>(_ properties: AMQPProperties, _ body: (amqp_basic_properties_t) -> R) -> R {
    var arena = StringArena()
    defer { arena.free() }
    var props = amqp_basic_properties_t()
    var flags: amqp_flags_t = TCB_FLAG_DELIVERY_MODE
    props.delivery_mode = properties.persistent ? 2 : 1
    if let contentType = properties.contentType {
        flags |= TCB_FLAG_CONTENT_TYPE
        props.content_type = arena.bytes(contentType)
    }
    if let messageID = properties.messageID {
        flags |= TCB_FLAG_MESSAGE_ID
        props.message_id = arena.bytes(messageID)
    }
    if let type = properties.type {
        flags |= TCB_FLAG_TYPE
        props.type = arena.bytes(type)
    }
    if let timestamp = properties.timestamp {
        flags |= TCB_FLAG_TIMESTAMP
        props.timestamp = UInt64(clamping: timestamp)
    }
    if let appID = properties.appID {
        flags |= TCB_FLAG_APP_ID
        props.app_id = arena.bytes(appID)
    }
    if let expiration = properties.expiration {
        flags |= TCB_FLAG_EXPIRATION
        props.expiration = arena.bytes(expiration)
    }
    if properties.headers.isEmpty {
        props._flags = flags
        return body(props)
    }
    props._flags = flags | TCB_FLAG_HEADERS
    return FieldTable.with(properties.headers) { table in
        props.headers = table
        return body(props)
    }
}

extension AMQPProperties {
    /// Copies decoded rabbitmq-c properties into Swift values.
    init(_ props: amqp_basic_properties_t) {
        let flags = props._flags
        self.init(
            contentType: flags & TCB_FLAG_CONTENT_TYPE != 0 ? String(amqpBytes: props.content_type) : nil,
            persistent: flags & TCB_FLAG_DELIVERY_MODE != 0 && props.delivery_mode == 2,
            messageID: flags & TCB_FLAG_MESSAGE_ID != 0 ? String(amqpBytes: props.message_id) : nil,
            type: flags & TCB_FLAG_TYPE != 0 ? String(amqpBytes: props.type) : nil,
            timestamp: flags & TCB_FLAG_TIMESTAMP != 0 ? Int64(clamping: props.timestamp) : nil,
            appID: flags & TCB_FLAG_APP_ID != 0 ? String(amqpBytes: props.app_id) : nil,
            expiration: flags & TCB_FLAG_EXPIRATION != 0 ? String(amqpBytes: props.expiration) : nil,
            headers: flags & TCB_FLAG_HEADERS != 0 ? FieldTable.decode(props.headers) : []
        )
    }
}

extension AMQPConnection {
    /// The heartbeat to ask for, in whole seconds: AMQP carries it in 16 bits, so 0...65,535
    /// (0 asks for none). A larger or negative configured value is clamped, never trapped on, and
    /// a positive one under a second asks for 1 s rather than none.
    static func heartbeatSeconds(_ heartbeat: Duration) -> Int32 {
        guard heartbeat > .zero else { return 0 }
        return Int32(min(max(heartbeat.clampedSeconds, 1), Int64(UInt16.max)))
    }

    /// `duration` in whole seconds and microseconds for a `timeval`: at least 0, saturating, never trapping.
    static func timevalParts(_ duration: Duration) -> (seconds: Int, microseconds: Int) {
        let microseconds = max(duration.clampedMicroseconds, 0)
        return (Int(microseconds / 1_000_000), Int(microseconds % 1_000_000))
    }

    /// `port` as rabbitmq-c takes it. - Throws: `.connectionFailed` outside 1...65,535 (the URL
    /// parser refuses such a port; one set by hand would otherwise wrap to another port).
    static func validatedPort(_ port: Int) throws(AMQPError) -> Int32 {
        guard (1...65_535).contains(port) else { throw AMQPError(.connectionFailed, "port \(port) is not in 1-65535") }
        return Int32(port)
    }
}

extension timeval {
    /// Whole microseconds of `duration`, at least 0 (see ``AMQPConnection/timevalParts(_:)``).
    init(_ duration: Duration) {
        let (seconds, microseconds) = AMQPConnection.timevalParts(duration)
        self.init(tv_sec: seconds, tv_usec: microseconds)
    }
}
