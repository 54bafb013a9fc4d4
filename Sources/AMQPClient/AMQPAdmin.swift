/// One-shot topology operations (declare, delete, inspect), for set-up tools and tests.
///
/// Threading: each call opens a short-lived connection on a dedicated thread, so no blocking socket
/// call runs on the cooperative pool. Not for hot paths. Errors: ``AMQPError``.
public struct AMQPAdmin: Sendable {
    public var connection: AMQPConnectionConfiguration

    public init(connection: AMQPConnectionConfiguration) {
        self.connection = connection
    }

    /// Declares the exchanges, then the queues with their bindings (idempotent when arguments match).
    public func declare(exchanges: [AMQPExchangeDeclaration] = [], queues: [AMQPQueueDeclaration] = []) async throws(AMQPError) {
        try await perform { (connection: AMQPConnection) throws(AMQPError) in
            for exchange in exchanges { try connection.declare(exchange) }
            for queue in queues { try connection.declare(queue) }
        }
    }

    /// The number of ready (not unacknowledged) messages in an existing durable queue.
    public func messageCount(queue: String) async throws(AMQPError) -> Int {
        try await perform { (connection: AMQPConnection) throws(AMQPError) -> Int in
            Int(try connection.declarePassive(queue: queue).messageCount)
        }
    }

    /// The number of consumers subscribed to an existing queue.
    public func consumerCount(queue: String) async throws(AMQPError) -> Int {
        try await perform { (connection: AMQPConnection) throws(AMQPError) -> Int in
            Int(try connection.declarePassive(queue: queue).consumerCount)
        }
    }

    /// Deletes a queue; returns how many messages it held.
    @discardableResult
    public func deleteQueue(_ name: String) async throws(AMQPError) -> Int {
        try await perform { (connection: AMQPConnection) throws(AMQPError) -> Int in Int(try connection.deleteQueue(name)) }
    }

    /// Up to `limit` messages of `queue`, oldest first, left in the queue (read with `basic.get`,
    /// then requeued in order when the connection closes; the queue does that once it learns of the
    /// close, so a message count taken at once may not show them yet, while a later `basic.get`
    /// does). Safe beside live consumers, which may receive them meanwhile.
    public func peek(queue: String, limit: Int) async throws(AMQPError) -> [AMQPInboundMessage] {
        try await perform { (connection: AMQPConnection) throws(AMQPError) -> [AMQPInboundMessage] in
            var messages: [AMQPInboundMessage] = []
            while messages.count < limit, let (_, message) = try connection.get(queue: queue) { messages.append(message) }
            return messages
        }
    }

    /// Moves the messages `queue` holds now (at most `limit`) by publishing what `transform` makes of
    /// each, with a broker confirm, then acknowledging the original: a message is never lost, and is
    /// duplicated only if the connection breaks between the confirm and the ack. Every copy is
    /// published `mandatory`: one that reaches no queue (a target queue that does not exist, an
    /// exchange nothing is bound to) comes back, and the move stops there with `.nacked`, leaving
    /// that message and the rest in `queue` (the broker confirms a dropped copy like any other, so
    /// without this its original would be acknowledged away). `transform` returning `nil` leaves a
    /// message where it is. Returns how many were moved, once the broker has answered the
    /// connection's close (so it has applied the acks); when it does not answer, throws
    /// `.connectionLost` saying how many were moved and that their originals may still be in `queue`.
    public func move(
        queue: String, limit: Int, _ transform: @escaping @Sendable (AMQPInboundMessage) -> AMQPOutboundMessage?
    ) async throws(AMQPError) -> Int {
        try await perform { (connection: AMQPConnection) throws(AMQPError) -> Int in
            try connection.enablePublisherConfirms()
            let waiting = Int(try connection.declarePassive(queue: queue).messageCount)
            var moved = 0
            var skipped: [UInt64] = []
            // Only what was there at the start: a moved message that comes back (say, still
            // unroutable) is not taken again.
            do throws(AMQPError) {
                for _ in 0..<min(waiting, limit) {
                    guard let (tag, message) = try connection.get(queue: queue) else { break }
                    guard var copy = transform(message) else {
                        skipped.append(tag)
                        continue
                    }
                    copy.mandatory = true
                    try connection.publish(copy)
                    do throws(AMQPError) {
                        try connection.awaitConfirm()
                    } catch {
                        guard error.isUnroutable else { throw error }
                        throw AMQPError(
                            .nacked,
                            "\(moved) moved; the next copy reached no queue (exchange '\(copy.exchange)', routing key '\(copy.routingKey)': "
                                + "\(error.message)), so it and the rest stay in \(queue)", replyCode: error.replyCode)
                    }
                    try connection.ack(tag)
                    moved += 1
                }
            } catch where moved > 0 && !error.isUnroutable {
                throw AMQPError(
                    error.kind,
                    "\(moved) messages were published again before this failed: \(error.message); "
                        + "some of their originals may still be in \(queue) as well (duplicates)", replyCode: error.replyCode)
            }
            for tag in skipped { try connection.nack(tag, requeue: true) }
            guard moved == 0 || connection.close() else {
                throw AMQPError(
                    .connectionLost,
                    "\(moved) messages were published again, but the broker did not answer the connection's close: "
                        + "some originals may still be in \(queue) as well (duplicates)")
            }
            return moved
        }
    }

    /// Publishes `messages`, each confirmed by the broker before the next (a tool's pace).
    public func publishConfirmed(_ messages: [AMQPOutboundMessage]) async throws(AMQPError) {
        try await perform { (connection: AMQPConnection) throws(AMQPError) in
            try connection.enablePublisherConfirms()
            for message in messages {
                try connection.publish(message)  // refuses a message that cannot travel, sending nothing
                try connection.awaitConfirm()
            }
        }
    }

    private func perform<R: Sendable>(_ body: @escaping @Sendable (AMQPConnection) throws(AMQPError) -> R) async throws(AMQPError) -> R {
        let configuration = connection
        let result = await withCheckedContinuation { (continuation: CheckedContinuation<Result<R, AMQPError>, Never>) in
            OwnerThread.spawn(name: "amqp-admin") {
                let result: Result<R, AMQPError>
                do throws(AMQPError) {
                    let connection = try AMQPConnection(configuration: configuration)
                    // Closed before the caller resumes: a tool that exits straight after would
                    // otherwise cut the connection mid-handshake, and RabbitMQ, tearing the
                    // channel down, may drop a `basic.ack` it had read but not yet applied
                    // (the moved message then comes back: a duplicate).
                    defer { connection.close() }
                    result = .success(try body(connection))
                } catch {
                    result = .failure(error)
                }
                continuation.resume(returning: result)
            }
        }
        return try result.get()
    }
}
