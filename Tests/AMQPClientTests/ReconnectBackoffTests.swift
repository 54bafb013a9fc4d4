@testable import AMQPClient
import Foundation
import Testing
import TestSupport

/// A connection the broker breaks soon after it is made is not made again at once: without a
/// delay, a failure that repeats on every connection (here a message whose settle makes the broker
/// close the channel, redelivered each time) becomes a loop of connections as fast as the broker
/// takes them.
@Suite struct ReconnectBackoffTests {
    @Test func aConnectionLostSoonAfterItWasMadeIsMadeAgainOnlyAfterTheBackoff() async throws {
        let queue = "backoff-\(UUID().uuidString.prefix(8))"
        // A connection counts as held once it lasted the maximum: 2 s, far longer than one of these
        // lives even on a loaded machine (connect, deliver, publish, channel closed).
        let backoff = AMQPBackoff(initial: .milliseconds(200), maximum: .seconds(2))
        let consumer = AMQPConsumer(
            configuration: AMQPConsumerConfiguration(
                connection: RabbitMQNode.shared.connection, queues: [AMQPQueueDeclaration(name: queue, durable: false)],
                queue: queue, reconnectBackoff: backoff, shutdownTimeout: .seconds(3)),
            logger: quietConsumerLogger)
        let runner = Task { try await consumer.run() }
        let deliveredAt = Recorder<ContinuousClock.Instant>()
        let handler = Task {
            for await delivery in consumer.deliveries {
                deliveredAt.append(.now)
                // An exchange that does not exist: the broker closes the channel (404), the consumer
                // reconnects, and the unsettled message comes again.
                try? await delivery.republishThenAck(
                    AMQPOutboundMessage(exchange: "no-such-exchange-\(queue)", routingKey: "x", properties: AMQPProperties(), body: [1]))
            }
        }
        try await waitUntil("consumer connected") { consumer.state == .connected }
        try await publish(count: 1, to: queue, on: .shared)
        try await waitUntil(timeout: .seconds(30), "delivered five times") { deliveredAt.count >= 5 }
        consumer.requestStop()
        try await runner.value
        handler.cancel()

        // Four quick losses wait at least half of each capped delay: 100, 200, 400 and 800 ms.
        let times = deliveredAt.all
        let span = times[4] - times[0]
        print("five deliveries over \(span)")
        #expect(span >= .milliseconds(1500), "reconnected after each quick loss without waiting: \(span)")
        _ = try? await AMQPAdmin(connection: RabbitMQNode.shared.connection).deleteQueue(queue)
    }
}
