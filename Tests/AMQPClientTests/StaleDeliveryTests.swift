@testable import AMQPClient
import Foundation
import Synchronization
import Testing
import TestSupport

/// Deliveries still waiting in ``AMQPConsumer/deliveries`` when their connection breaks are not
/// handed out: their settle calls could only fail, and the broker delivers them again on the next
/// connection. Handing them out ran a handler twice for each after every reconnect.
@Suite struct StaleDeliveryTests {
    @Test func deliveriesWaitingWhenTheConnectionBreaksAreDroppedAndComeBackRedelivered() async throws {
        let queue = "stale-\(UUID().uuidString.prefix(8))"
        let consumer = AMQPConsumer(
            configuration: AMQPConsumerConfiguration(
                connection: RabbitMQNode.shared.connection, queues: [AMQPQueueDeclaration(name: queue, durable: false)],
                queue: queue, prefetch: 10, reconnectBackoff: AMQPBackoff(initial: .milliseconds(50), maximum: .milliseconds(200)),
                shutdownTimeout: .seconds(3)),
            logger: quietConsumerLogger)
        let runner = Task { try await consumer.run() }
        try await waitUntil("consumer connected") { consumer.state == .connected }
        try await publish(count: 5, to: queue, on: .shared)
        // All five are handed to the stream before the test reads any of them.
        try await waitUntil("five deliveries waiting in the stream") { consumer.yieldedCount.load(ordering: .relaxed) == 5 }

        var iterator = consumer.deliveries.makeAsyncIterator()
        let next = await iterator.next()
        let first = try #require(next)
        #expect(!first.isStale)
        // An exchange that does not exist: the broker closes the channel (404), so the connection
        // the other four came on is gone by the time this throws.
        await #expect(throws: AMQPError.self) {
            try await first.republishThenAck(
                AMQPOutboundMessage(exchange: "no-such-exchange-\(queue)", routingKey: "x", properties: AMQPProperties(), body: [1]))
        }
        #expect(first.isStale)

        // What comes next is the broker's redelivery of all five on the new connection, each of
        // which can be acknowledged; not the four left over from the broken one.
        var handedOut: [AMQPDelivery] = []
        while handedOut.count < 5, let delivery = await iterator.next() {
            handedOut.append(delivery)
            try await delivery.ack()
        }
        #expect(handedOut.allSatisfy { $0.message.redelivered })
        #expect(Set(handedOut.compactMap(\.message.properties.messageID)) == Set((0..<5).map { "m\($0)" }))
        #expect(consumer.staleDropped.load(ordering: .relaxed) == 4)

        consumer.requestStop()
        try await runner.value
        // Nothing else was handed out, and nothing is left on the broker.
        let tail = await iterator.next()
        #expect(tail == nil)
        let left = try await AMQPAdmin(connection: RabbitMQNode.shared.connection).deleteQueue(queue)
        #expect(left == 0)
    }
}
