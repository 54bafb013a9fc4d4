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

    private func perform<R: Sendable>(_ body: @escaping @Sendable (AMQPConnection) throws(AMQPError) -> R) async throws(AMQPError) -> R {
        let configuration = connection
        let result = await withCheckedContinuation { (continuation: CheckedContinuation<Result<R, AMQPError>, Never>) in
            OwnerThread.spawn(name: "amqp-admin") {
                do throws(AMQPError) {
                    let connection = try AMQPConnection(configuration: configuration)
                    defer { connection.close() }
                    continuation.resume(returning: .success(try body(connection)))
                } catch {
                    continuation.resume(returning: .failure(error))
                }
            }
        }
        return try result.get()
    }
}
