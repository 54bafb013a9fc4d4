import AMQPClient
import Foundation
import Logging
import ServiceLifecycle
import TestSupport
import TutorCruncherConsumer

/// Runs `services` in a ServiceGroup while `body` runs, then shuts them down gracefully and waits.
func withServices<R: Sendable>(_ services: [any Service], _ body: () async throws -> R) async throws -> R {
    var logger = Logger(label: "services")
    logger.logLevel = .error
    let group = ServiceGroup(configuration: .init(services: services, logger: logger))
    let runner = Task { try await group.run() }
    do {
        let result = try await body()
        await group.triggerGracefulShutdown()
        try await runner.value
        return result
    } catch {
        await group.triggerGracefulShutdown()
        _ = try? await runner.value
        throw error
    }
}

func consumerConfiguration(
    node: RabbitMQNode = .shared, exchange: String, queue: String = "svc-\(UUID().uuidString.prefix(8))",
    actions: [TutorCruncherAction] = [], prefetch: UInt16 = 20
) -> TutorCruncherConsumerConfiguration {
    var connection = node.connection
    connection.connectionName = "consumer-tests"
    // Retries at once, with no wait queues: every wait queue is a quorum queue, and dozens of
    // consumers each declaring five would load the one test broker every test shares. The tests
    // of waiting retries set their own policy.
    return TutorCruncherConsumerConfiguration(
        connection: connection, exchange: exchange, queue: queue, actions: actions, prefetch: prefetch,
        retryPolicy: .init(initialDelay: .zero),
        reconnectBackoff: AMQPBackoff(initial: .milliseconds(50), maximum: .milliseconds(500)),
        shutdownTimeout: .seconds(20))
}

var quietLogger: Logger {
    var logger = Logger(label: "consumer-under-test")
    logger.logLevel = .critical
    return logger
}

/// How many messages `queue` still holds, ready or not, once every consumer of it has stopped.
/// Counted with `basic.get`, which the queue serves only after it has applied the stopped consumers'
/// acks and requeued what they left unsettled. (A passive declare's count does not wait for that,
/// and while a consumer runs it never counts what the consumer holds, acknowledged or not.)
func messagesLeft(in queue: String) async throws -> Int {
    try await AMQPAdmin(connection: RabbitMQNode.shared.connection).peek(queue: queue, limit: 100).count
}

func uniqueExchange() -> String { "cons-\(UUID().uuidString.prefix(8))" }

struct HandlerFailure: Error, CustomStringConvertible {
    let attempt: Int
    var description: String { "billing system said no (attempt \(attempt))" }
}

