import AMQPClient
import Foundation
import TestSupport
import Testing
import TutorCruncherConsumer

/// Broker restarts and graceful shutdown.
@Suite(.serialized) struct ConsumerResilienceTests {
    @Test func brokerRestartWhileConsumingLosesNothing() async throws {
        try await RabbitMQNode.withDedicated(name: "consumer-restart", port: 5692) { node in
            let exchange = uniqueExchange()
            let configuration = consumerConfiguration(node: node, exchange: exchange, prefetch: 5)
            let gate = Gate()
            let meter = ConcurrencyMeter()
            let handled = Recorder<String>()
            let processor = TutorCruncherEventProcessor(configuration: configuration, logger: quietLogger) { event in
                meter.enter()
                defer { meter.leave() }
                await gate.wait()
                handled.append(event.eventID)
            }
            try await withServices([processor]) {
                try await waitUntil("consumer connected") { processor.consumer.isConnected }
                let before = try await publishWebhookBodies(
                    node: node, exchange: exchange, bodies: (0..<20).map { Webhooks.body(actions: ["LOGIN"], subjectID: $0) })
                // Five deliveries are in the handlers, unacknowledged, when the broker goes down.
                try await waitUntil("5 in flight") { meter.current == 5 }
                try await node.stop()
                gate.open()
                try await waitUntil("consumer noticed the outage") { !processor.consumer.isConnected }
                try await node.start()
                try await waitUntil(timeout: .seconds(60), "consumer reconnected") { processor.consumer.isConnected }
                let after = try await publishWebhookBodies(
                    node: node, exchange: exchange, bodies: (20..<40).map { Webhooks.body(actions: ["LOGIN"], subjectID: $0) })
                let expected = Set((before + after).map(\.eventID))
                try await waitUntil(timeout: .seconds(60), "every event handled at least once") { expected.isSubset(of: Set(handled.all)) }
                print("broker restart: published \(expected.count), handler runs \(handled.count) (\(handled.count - expected.count) redeliveries)")
            }
        }
    }

    @Test func gracefulShutdownFinishesInFlightHandlersAndLeavesTheRestQueued() async throws {
        let exchange = uniqueExchange()
        let configuration = consumerConfiguration(exchange: exchange, prefetch: 5)
        let gate = Gate()
        let meter = ConcurrencyMeter()
        let handled = Recorder<String>()
        let processor = TutorCruncherEventProcessor(configuration: configuration, logger: quietLogger) { event in
            meter.enter()
            defer { meter.leave() }
            await gate.wait()
            handled.append(event.eventID)
        }
        let admin = AMQPAdmin(connection: RabbitMQNode.shared.connection)
        var logger = quietLogger
        logger.logLevel = .critical
        let group = ServiceGroupRunner(services: [processor])
        try await waitUntil("consumer connected") { processor.consumer.isConnected }
        let envelopes = try await publishWebhookBodies(exchange: exchange, bodies: (0..<10).map { Webhooks.body(actions: ["LOGIN"], subjectID: $0) })
        try await waitUntil("5 handlers in flight") { meter.current == 5 }

        await group.triggerGracefulShutdown()
        // The subscription is cancelled before the handlers are released: no new deliveries.
        try await waitUntil("subscription cancelled") { try await admin.consumerCount(queue: configuration.queue) == 0 }
        gate.open()
        try await group.wait()

        #expect(handled.count == 5, "only the in-flight events are handled")
        let inFlight = Set(handled.all)
        #expect(inFlight.isSubset(of: Set(envelopes.map(\.eventID))))
        // All five in-flight events were acknowledged (none returned to the queue), the other five wait.
        // Counted with basic.get, which the queue serves after the closed channel's acks and requeues
        // (a passive declare's count may be served ahead of them, and would say 5 either way).
        #expect(try await admin.peek(queue: configuration.queue, limit: 20).count == 5)
        #expect(processor.consumer.isConnected == false)
    }
}

import Logging
import ServiceLifecycle

/// A ServiceGroup running in the background, for tests that control shutdown themselves.
final class ServiceGroupRunner: Sendable {
    private let group: ServiceGroup
    private let task: Task<Void, any Error>

    init(services: [any Service]) {
        var logger = Logger(label: "services")
        logger.logLevel = .critical
        let group = ServiceGroup(configuration: .init(services: services, logger: logger))
        self.group = group
        self.task = Task { try await group.run() }
    }

    func triggerGracefulShutdown() async { await group.triggerGracefulShutdown() }
    func wait() async throws { try await task.value }
}
