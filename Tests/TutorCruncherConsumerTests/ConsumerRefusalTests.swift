import AMQPClient
import Foundation
import TestSupport
import Testing
import TutorCruncherConsumer

/// Refusals that retrying will not fix stop the service with the broker's reason; transient
/// failures are retried (the resilience tests show that).
@Suite struct ConsumerRefusalTests {
    enum Misconfiguration: String, CaseIterable, Sendable {
        case wrongPassword, missingVirtualHost, queueTypeMismatch
    }

    @Test(arguments: Misconfiguration.allCases)
    func aRefusalThatWillNotFixItselfStopsTheServiceAndEndsTheDeliveries(_ misconfiguration: Misconfiguration) async throws {
        var configuration = consumerConfiguration(exchange: uniqueExchange())
        let expected: UInt16
        switch misconfiguration {
        case .wrongPassword:
            configuration.connection.password = "wrong-\(UUID().uuidString)"
            expected = 403  // ACCESS_REFUSED
        case .missingVirtualHost:
            configuration.connection.virtualHost = "no-such-vhost-\(UUID().uuidString.prefix(8))"
            expected = 530  // NOT_ALLOWED
        case .queueTypeMismatch:
            // The queue exists as a classic queue; this service asks for a quorum queue.
            try await AMQPAdmin(connection: RabbitMQNode.shared.connection).declare(queues: [
                AMQPQueueDeclaration(name: configuration.queue, durable: true, arguments: ["x-expires": .int(60_000)])
            ])
            configuration.queueType = .quorum
            expected = 406  // PRECONDITION_FAILED
        }
        let consumer = TutorCruncherConsumer(configuration: configuration, logger: quietLogger)
        let reader = Task { () throws -> Int in
            var count = 0
            for try await _ in consumer.deliveries { count += 1 }
            return count
        }
        let outcome = await withTaskGroup(of: Result<Void, any Error>?.self) { group in
            group.addTask {
                do {
                    try await consumer.run()
                    return .success(())
                } catch {
                    return .failure(error)
                }
            }
            group.addTask {
                // A hang guard, not a timing goal: the refusal comes back on the first attempt.
                try? await Task.sleep(for: .seconds(60))
                return nil
            }
            let first = await group.next() ?? nil
            group.cancelAll()
            return first
        }
        guard case .failure(let error as AMQPError)? = outcome else {
            Issue.record("run() did not stop with the refusal: \(String(describing: outcome))")
            return
        }
        #expect(error.replyCode == expected, "\(error)")
        #expect(error.isPermanentRefusal)
        let ended = await reader.result
        guard case .failure(let deliveriesError) = ended else {
            Issue.record("deliveries ended without the refusal")
            return
        }
        #expect((deliveriesError as? AMQPError)?.replyCode == expected, "\(deliveriesError)")
    }
}
