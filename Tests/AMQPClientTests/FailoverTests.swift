import Foundation
import Logging
import Testing
import TestSupport

@testable import AMQPClient

/// Several brokers: a client connects to the first that answers, fails over to the next when its
/// broker goes away, and returns to the preferred one on a later reconnect. Proven on real nodes.
@Suite(.serialized) struct FailoverTests {
    @Test func anUnreachablePreferredBrokerIsSkipped() async throws {
        var configuration = AMQPPublisherConfiguration(connection: try AMQPConnectionConfiguration(url: "amqp://guest:guest@127.0.0.1:1/%2F"))
        configuration.failoverConnections = [RabbitMQNode.shared.connection]
        let queue = "failover-skip-\(UUID().uuidString.prefix(8))"
        configuration.queues = [AMQPQueueDeclaration(name: queue)]
        try await withPublisher(configuration) { publisher in
            try await waitUntil("connected to the second broker") { publisher.state == .connected }
            try await publisher.publish([AMQPOutboundMessage(exchange: "", routingKey: queue, properties: AMQPProperties(), body: [1])])
        }
        let admin = AMQPAdmin(connection: RabbitMQNode.shared.connection)
        #expect(try await admin.messageCount(queue: queue) == 1)
        try await admin.deleteQueue(queue)
    }

    @Test func publisherAndConsumerFailOverWhenTheirBrokerStopsAndComeBackToThePreferredOne() async throws {
        try await RabbitMQNode.withDedicated(name: "failover-a", port: 5682) { first in
            try await RabbitMQNode.withDedicated(name: "failover-b", port: 5684) { second in
                let queue = "failover-\(UUID().uuidString.prefix(8))"
                let queues = [AMQPQueueDeclaration(name: queue)]

                var publishing = AMQPPublisherConfiguration(connection: first.connection, queues: queues)
                publishing.failoverConnections = [second.connection]
                publishing.reconnectBackoff = AMQPBackoff(initial: .milliseconds(50), maximum: .milliseconds(300))
                var consuming = AMQPConsumerConfiguration(
                    connection: first.connection, queues: queues, queue: queue,
                    reconnectBackoff: AMQPBackoff(initial: .milliseconds(50), maximum: .milliseconds(300)), shutdownTimeout: .seconds(3))
                consuming.failoverConnections = [second.connection]
                var logger = Logger(label: "failover-consumer")
                logger.logLevel = .critical
                let consumer = AMQPConsumer(configuration: consuming, logger: logger)
                let consumerRun = Task { try await consumer.run() }
                let received = Recorder<String>()
                let reader = Task {
                    for await delivery in consumer.deliveries {
                        if (try? await delivery.ack()) != nil { received.append(delivery.message.routingKey + ":" + String(decoding: delivery.message.body, as: UTF8.self)) }
                    }
                }
                defer { reader.cancel() }

                try await withPublisher(publishing) { publisher in
                    func send(_ text: String) async throws {
                        try await waitUntil(timeout: .seconds(30), "publisher connected") { publisher.state == .connected }
                        try await publisher.publish([AMQPOutboundMessage(exchange: "", routingKey: queue, properties: AMQPProperties(), body: Array(text.utf8))])
                    }
                    try await waitUntil(timeout: .seconds(30), "consumer connected") { consumer.state == .connected }
                    try await send("on-a")
                    try await waitUntil(timeout: .seconds(30), "consumed on the first broker") { received.all.contains("\(queue):on-a") }

                    try await first.stop()  // both fail over to the second broker
                    try await waitUntil(timeout: .seconds(60), "published on the second broker") { (try? await send("on-b")) != nil }
                    try await waitUntil(timeout: .seconds(60), "consumed on the second broker") { received.all.contains("\(queue):on-b") }

                    try await onOwnThread {
                        try first.start()
                        try second.stop()  // the next reconnect starts from the preferred broker again
                    }
                    try await waitUntil(timeout: .seconds(60), "published on the first broker again") { (try? await send("back-on-a")) != nil }
                    try await waitUntil(timeout: .seconds(60), "consumed on the first broker again") { received.all.contains("\(queue):back-on-a") }
                }
                // (A publish that raced a failover may have been retried: at least once, in order.)
                var firstSeen: [String] = []
                for message in received.all where !firstSeen.contains(message) { firstSeen.append(message) }
                #expect(firstSeen == ["\(queue):on-a", "\(queue):on-b", "\(queue):back-on-a"])
                consumer.requestStop()
                try await consumerRun.value
            }
        }
    }
}
