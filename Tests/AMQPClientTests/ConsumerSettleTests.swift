@testable import AMQPClient
import Dispatch
import Foundation
import Logging
import Synchronization
import Testing
import TestSupport

/// Settle calls against a broker that dies or blocks: every call returns or throws, consumption
/// continues after the broker is back, and shutdown finishes within its deadline. Each test owns a
/// node (SIGKILL, memory alarm), so the suite runs serially.
@Suite(.serialized) struct ConsumerSettleTests {
    @Test func everySettleCallReturnsWhenTheBrokerIsKilledWithAcksRejectionsAndRepublishesQueued() async throws {
        try await RabbitMQNode.withDedicated(name: "consumer-settle-kill", port: 5686) { node in
            let names = QueueNames()
            let pause = OwnerPause()
            let consumer = AMQPConsumer(
                configuration: settleConfiguration(node, names, prefetch: 60), logger: quietConsumerLogger,
                hooks: AMQPConsumerHooks(beforeTakingCommands: { pause.hold() }))
            let runner = Task { try await consumer.run() }
            let deliveries = DeliveryCollector(consumer, holdFirst: 60)
            try await waitUntil("consumer connected") { consumer.state == .connected }
            try await publish(count: 60, to: names.queue, on: node)
            try await waitUntil("60 deliveries held unsettled") { deliveries.held.count == 60 }

            // Hold the owner thread, queue 60 settle calls behind it, SIGKILL the broker, let it go:
            // the owner writes acks, nacks and publishes into a dead socket.
            pause.arm()
            try await waitUntil("owner thread held") { pause.isHolding }
            let outcomes = SettleOutcomes()
            for (index, delivery) in deliveries.held.all.enumerated() {
                outcomes.start {
                    switch index % 3 {
                    case 0: try await delivery.ack()
                    case 1: try await delivery.reject()
                    default: try await delivery.republishThenAck(deadLetterCopy(of: delivery, names))
                    }
                }
            }
            try await waitUntil("60 settle calls queued") { consumer.queuedCommandCount == 60 }
            try await node.kill()
            pause.release()

            // confirmTimeout is 30 s here, so the backstop timer cannot be what answers them.
            try await waitUntil(timeout: .seconds(10), "every settle call returned or threw (\(outcomes.count) of 60)") { outcomes.count == 60 }
            let failures = outcomes.failures
            print("broker killed with 60 settle calls queued: \(60 - failures.count) returned, \(failures.count) threw")
            #expect(!failures.isEmpty, "writes into a dead socket must fail")
            #expect(failures.allSatisfy { $0.kind == .connectionLost }, "\(failures)")

            // Consumption continues after the broker is back: the unsettled messages come again.
            try await node.start()
            try await waitUntil(timeout: .seconds(60), "consumer reconnected") { consumer.state == .connected }
            try await expectConsumptionResumes(deliveries, names, node)
            #expect(deliveries.acknowledgedAfterHold.all.filter { $0.properties.messageID != freshMessageID }.allSatisfy { $0.redelivered })

            try await expectShutdownWithinDeadline(consumer, runner)
            deliveries.stop()
        }
    }

    @Test func republishConfirmsWhoseAcknowledgementsFailHalfWayAllReturn() async throws {
        try await RabbitMQNode.withDedicated(name: "consumer-settle-confirm", port: 5689) { node in
            let names = QueueNames()
            let pause = OwnerPause()
            let killOnce = Once()
            let consumer = AMQPConsumer(
                configuration: settleConfiguration(node, names, prefetch: 20), logger: quietConsumerLogger,
                hooks: AMQPConsumerHooks(
                    beforeTakingCommands: { pause.hold() },
                    beforeAckingRepublished: {
                        // The broker confirmed the copies; it dies before the originals are acknowledged.
                        if killOnce.claim() { try? node.kill() }
                    }))
            let runner = Task { try await consumer.run() }
            let deliveries = DeliveryCollector(consumer, holdFirst: 20)
            try await waitUntil("consumer connected") { consumer.state == .connected }
            try await publish(count: 20, to: names.queue, on: node)
            try await waitUntil("20 deliveries held unsettled") { deliveries.held.count == 20 }

            // All 20 republishes go out in one batch, so their confirms arrive together.
            pause.arm()
            try await waitUntil("owner thread held") { pause.isHolding }
            let outcomes = SettleOutcomes()
            for delivery in deliveries.held.all {
                outcomes.start { try await delivery.republishThenAck(deadLetterCopy(of: delivery, names)) }
            }
            try await waitUntil("20 republishes queued") { consumer.queuedCommandCount == 20 }
            pause.release()

            try await waitUntil(timeout: .seconds(15), "every republishThenAck returned or threw (\(outcomes.count) of 20)") { outcomes.count == 20 }
            #expect(killOnce.claimed, "the broker confirmed the republishes before it was killed")
            let failures = outcomes.failures
            print("broker killed between republish confirms and acks: \(20 - failures.count) returned, \(failures.count) threw")
            #expect(!failures.isEmpty)
            #expect(failures.allSatisfy { $0.kind == .connectionLost }, "\(failures)")

            try await node.start()
            try await waitUntil(timeout: .seconds(60), "consumer reconnected") { consumer.state == .connected }
            try await expectConsumptionResumes(deliveries, names, node)
            try await expectShutdownWithinDeadline(consumer, runner)
            deliveries.stop()
        }
    }

    @Test func aWriteTheBrokerNeverReadsIsAbortedAndEverySettleCallReturns() async throws {
        try await RabbitMQNode.withDedicated(name: "consumer-settle-stall", port: 5688) { node in
            let names = QueueNames()
            var configuration = settleConfiguration(node, names, prefetch: 10)
            configuration.confirmTimeout = .seconds(2)
            let consumer = AMQPConsumer(configuration: configuration, logger: quietConsumerLogger)
            let runner = Task { try await consumer.run() }
            let deliveries = DeliveryCollector(consumer, holdFirst: 5)
            try await waitUntil("consumer connected") { consumer.state == .connected }
            try await publish(count: 5, to: names.queue, on: node)
            try await waitUntil("5 deliveries held") { deliveries.held.count == 5 }
            let held = deliveries.held.all

            // A frozen broker (SIGSTOP) reads nothing: a 32 MiB republish fills the socket and the owner
            // thread blocks in the write. The watchdog aborts it after confirmTimeout.
            try await node.pause()
            let outcomes = SettleOutcomes()
            let started = ContinuousClock.now
            do {
                var copy = deadLetterCopy(of: held[0], names)
                copy.body = [UInt8](repeating: 0x61, count: 32 << 20)
                let huge = copy
                outcomes.start { try await held[0].republishThenAck(huge) }
                for delivery in held[1...] { outcomes.start { try await delivery.ack() } }
                try await waitUntil(timeout: .seconds(8), "every settle call returned or threw (\(outcomes.count) of 5)") { outcomes.count == 5 }
            } catch {
                try? await node.resume()
                throw error
            }
            print("frozen broker: 5 settle calls answered after \(ContinuousClock.now - started): \(outcomes.failures.map(\.kind))")
            #expect(!outcomes.failures.isEmpty, "the stuck republish fails")
            try await node.resume()
            try await waitUntil(timeout: .seconds(60), "consumer reconnected") { consumer.state == .connected }
            try await expectConsumptionResumes(deliveries, names, node)
            try await expectShutdownWithinDeadline(consumer, runner)
            deliveries.stop()
        }
    }

    @Test func connectionBlockedNeitherWedgesTheConsumerNorHangsARepublish() async throws {
        try await RabbitMQNode.withDedicated(name: "consumer-blocked", port: 5687) { node in
            let names = QueueNames()
            var configuration = settleConfiguration(node, names, prefetch: 10)
            configuration.confirmTimeout = .seconds(2)
            let consumer = AMQPConsumer(configuration: configuration, logger: quietConsumerLogger)
            let runner = Task { try await consumer.run() }
            let deliveries = DeliveryCollector(consumer, holdFirst: 4)
            try await waitUntil("consumer connected") { consumer.state == .connected }
            try await publish(count: 4, to: names.queue, on: node)
            try await waitUntil("4 deliveries held") { deliveries.held.count == 4 }
            let held = deliveries.held.all

            try await withMemoryAlarm(on: node) {
                // The broker stops reading a connection that publishes during the alarm: the republish
                // fails within its deadline (blocked, or no confirm) instead of waiting for ever.
                let first = SettleOutcomes()
                first.start { try await held[0].republishThenAck(deadLetterCopy(of: held[0], names)) }
                try await waitUntil(timeout: .seconds(6), "republish during the alarm returned or threw") { first.count == 1 }
                let kinds = first.failures.map(\.kind)
                print("memory alarm: first republish failed with \(kinds)")
                #expect(kinds == [.blocked] || kinds == [.confirmTimeout], "\(kinds)")
                try await waitUntil(timeout: .seconds(10), "consumer reports the block") {
                    if case .blocked = consumer.state { return true }
                    return false
                }
                // While blocked, another republish waits at most its deadline and fails with `.blocked`.
                let second = SettleOutcomes()
                second.start { try await held[1].republishThenAck(deadLetterCopy(of: held[1], names)) }
                try await waitUntil(timeout: .seconds(6), "republish while blocked returned or threw") { second.count == 1 }
                #expect(second.failures.map(\.kind) == [.blocked])
                // Acknowledgements are still accepted (they wait in the socket until the broker reads again).
                let ack = SettleOutcomes()
                ack.start { try await held[2].ack() }
                try await waitUntil(timeout: .seconds(6), "ack while blocked returned") { ack.count == 1 }
                #expect(ack.failures.isEmpty)
            }
            try await waitUntil(timeout: .seconds(30), "consumer unblocked") { consumer.state == .connected }
            // The same deliveries can now be republished and settled: the consumer is not wedged.
            try await held[1].republishThenAck(deadLetterCopy(of: held[1], names))
            try await held[3].ack()
            try await held[0].nack(requeue: true)
            try await waitUntil(timeout: .seconds(10), "requeued delivery came back and was acknowledged") {
                deliveries.acknowledgedAfterHold.count >= 1
            }
            try await expectShutdownWithinDeadline(consumer, runner)
            deliveries.stop()
        }
    }

    /// Shutdown's deadline for unsettled deliveries does not cut a republish already under way:
    /// held back by the broker's memory alarm past that deadline, the copy is still published once
    /// the alarm clears and its original acknowledged, so nothing comes back to be dead-lettered twice.
    @Test func aRepublishUnderWayAtTheShutdownDeadlineStillCompletes() async throws {
        try await RabbitMQNode.withDedicated(name: "consumer-blocked", port: 5687) { node in
            let names = QueueNames()
            var configuration = settleConfiguration(node, names, prefetch: 10)
            configuration.shutdownTimeout = .milliseconds(100)
            configuration.confirmTimeout = .seconds(30)
            // Stopping sends basic.cancel, whose reply waits, like the republish, until the alarm
            // clears; clearing it (rabbitmqctl, then the broker's next memory check) took over the
            // default 5 s RPC timeout under a full run's load once, and the consumer then rightly
            // gave the connection up. This test is about the shutdown deadline, not that timeout.
            configuration.connection.rpcTimeout = .seconds(30)
            let consumer = AMQPConsumer(configuration: configuration, logger: quietConsumerLogger)
            let runner = Task { try await consumer.run() }
            let deliveries = DeliveryCollector(consumer, holdFirst: 1)
            defer { deliveries.stop() }
            try await waitUntil("consumer connected") { consumer.state == .connected }
            try await publish(count: 1, to: names.queue, on: node)
            try await waitUntil("the delivery held") { deliveries.held.count == 1 }
            let delivery = try #require(deliveries.held.all.first)

            let outcome = SettleOutcomes()
            try await withMemoryAlarm(on: node) {
                outcome.start { try await delivery.republishThenAck(deadLetterCopy(of: delivery, names)) }
                consumer.requestStop()
                // Well past the 100 ms shutdown deadline: the time itself is what is waited for.
                try await Task.sleep(for: .seconds(1))
                #expect(outcome.count == 0, "the republish was cut at the shutdown deadline: \(outcome.failures)")
                #expect(consumer.state != .closed, "the consumer closed with a republish under way")
            }
            try await waitUntil(timeout: .seconds(30), "the republish returned") { outcome.count == 1 }
            #expect(outcome.failures.isEmpty, "\(outcome.failures)")
            try await waitUntil(timeout: .seconds(10), "consumer closed") { consumer.state == .closed }
            try await runner.value
            let admin = AMQPAdmin(connection: node.connection)
            try await waitUntil(timeout: .seconds(10), "the original acknowledged away") {
                try await admin.messageCount(queue: names.queue) == 0
            }
            #expect(try await admin.messageCount(queue: names.deadLetterQueue) == 1, "the copy, once")
        }
    }
}

// MARK: - Helpers

struct QueueNames {
    let queue = "settle-\(UUID().uuidString.prefix(8))"
    var deadLetterQueue: String { queue + ".dead" }
}

var quietConsumerLogger: Logger {
    var logger = Logger(label: "consumer-under-test")
    logger.logLevel = .critical
    return logger
}

/// A queue dead-lettering (by the broker) into its own dead-letter queue; short shutdown, long
/// confirm deadline (so the settle backstop timer never answers in these tests).
func settleConfiguration(_ node: RabbitMQNode, _ names: QueueNames, prefetch: UInt16) -> AMQPConsumerConfiguration {
    AMQPConsumerConfiguration(
        connection: node.connection,
        queues: [
            AMQPQueueDeclaration(name: names.deadLetterQueue),
            AMQPQueueDeclaration(
                name: names.queue,
                arguments: ["x-dead-letter-exchange": .string(""), "x-dead-letter-routing-key": .string(names.deadLetterQueue)]),
        ],
        queue: names.queue, prefetch: prefetch,
        reconnectBackoff: AMQPBackoff(initial: .milliseconds(50), maximum: .milliseconds(500)),
        shutdownTimeout: .seconds(3), confirmTimeout: .seconds(30))
}

/// Runs `body` with the node's memory alarm raised (the broker blocks publishers), then clears
/// it, also when `body` throws.
func withMemoryAlarm(on node: RabbitMQNode, _ body: () async throws -> Void) async throws {
    try await node.ctl("set_vm_memory_high_watermark", "0.0001")
    do {
        try await body()
    } catch {
        _ = try? await node.ctl("set_vm_memory_high_watermark", "0.4")
        throw error
    }
    try await node.ctl("set_vm_memory_high_watermark", "0.4")
}

func deadLetterCopy(of delivery: AMQPDelivery, _ names: QueueNames) -> AMQPOutboundMessage {
    AMQPOutboundMessage(exchange: "", routingKey: names.deadLetterQueue, properties: delivery.message.properties, body: delivery.message.body)
}

func publish(count: Int, to queue: String, on node: RabbitMQNode) async throws {
    try await withPublisher(.init(connection: node.connection)) { publisher in
        try await waitUntil("publisher connected") { publisher.state == .connected }
        try await publisher.publish(
            (0..<count).map { index in
                AMQPOutboundMessage(
                    exchange: "", routingKey: queue, properties: AMQPProperties(messageID: "m\(index)"), body: Array("message \(index)".utf8))
            })
    }
}

let freshMessageID = "published-after-restart"

/// Consumption continues after the broker is back: one message published now is delivered and
/// acknowledged (whether or not the broker redelivers the held ones first, which is its business:
/// a SIGKILLed node may recover unacknowledged messages late). Prints the queue's counts when it
/// times out, so a failure in CI says whether the broker or the consumer held things up.
func expectConsumptionResumes(_ deliveries: DeliveryCollector, _ names: QueueNames, _ node: RabbitMQNode) async throws {
    try await withPublisher(.init(connection: node.connection)) { publisher in
        try await waitUntil("publisher connected") { publisher.state == .connected }
        try await publisher.publish([
            AMQPOutboundMessage(
                exchange: "", routingKey: names.queue, properties: AMQPProperties(messageID: freshMessageID), body: Array("fresh".utf8))
        ])
    }
    do {
        try await waitUntil(timeout: .seconds(30), "a message published after the restart acknowledged") {
            deliveries.acknowledgedAfterHold.all.contains { $0.properties.messageID == freshMessageID }
        }
    } catch {
        let queues = (try? await node.ctl("list_queues", "name", "messages_ready", "messages_unacknowledged", "consumers")) ?? "(list_queues failed)"
        print("consumption did not resume; acknowledged after the hold: \(deliveries.acknowledgedAfterHold.count); broker queues:\n\(queues)")
        throw error
    }
    let redelivered = deliveries.acknowledgedAfterHold.all.filter(\.redelivered).count
    print("after the restart: \(redelivered) redelivered and the fresh message acknowledged")
}

/// Stops the consumer and checks that `run()` returns within its shutdown deadline plus a margin.
func expectShutdownWithinDeadline(_ consumer: AMQPConsumer, _ runner: Task<Void, any Error>) async throws {
    let started = ContinuousClock.now
    consumer.requestStop()
    try await waitUntil(timeout: .seconds(10), "consumer closed") { consumer.state == .closed }
    try await runner.value
    #expect(ContinuousClock.now - started < .seconds(10))
}

/// Reads a consumer's deliveries: holds the first `holdFirst` unsettled, acknowledges the rest.
final class DeliveryCollector: Sendable {
    let held = Recorder<AMQPDelivery>()
    let acknowledgedAfterHold = Recorder<AMQPInboundMessage>()
    private let task: Task<Void, Never>

    init(_ consumer: AMQPConsumer, holdFirst: Int) {
        let held = self.held
        let acknowledged = self.acknowledgedAfterHold
        task = Task {
            for await delivery in consumer.deliveries {
                if held.count < holdFirst {
                    held.append(delivery)
                } else if (try? await delivery.ack()) != nil {
                    acknowledged.append(delivery.message)
                }
            }
        }
    }

    func stop() { task.cancel() }
}

/// Outcomes of settle calls started in the background; a call that never returns is simply
/// missing from the count (the test's deadline reports it). Thread-safe.
final class SettleOutcomes: Sendable {
    private let outcomes = Recorder<AMQPError?>()

    func start(_ call: @escaping @Sendable () async throws -> Void) {
        Task {
            do {
                try await call()
                outcomes.append(nil)
            } catch let error as AMQPError {
                outcomes.append(error)
            } catch {
                outcomes.append(AMQPError(.protocolError, "unexpected error: \(error)"))
            }
        }
    }

    var count: Int { outcomes.count }
    var failures: [AMQPError] { outcomes.all.compactMap { $0 } }
}

/// Holds the consumer's owner thread at a hook, once per `arm()`, until `release()`. Thread-safe.
final class OwnerPause: Sendable {
    private let state = Mutex<(armed: Bool, holding: Bool)>((false, false))
    private let gate = DispatchSemaphore(value: 0)

    func arm() { state.withLock { $0.armed = true } }
    var isHolding: Bool { state.withLock { $0.holding } }

    /// The hook: blocks the calling (owner) thread while armed.
    func hold() {
        let hold = state.withLock { state in
            guard state.armed else { return false }
            state.armed = false
            state.holding = true
            return true
        }
        if hold { gate.wait() }
    }

    func release() {
        state.withLock { $0.holding = false }
        gate.signal()
    }
}

/// True for exactly one caller of ``claim()``. Thread-safe.
final class Once: Sendable {
    private let state = Mutex(false)
    func claim() -> Bool {
        state.withLock { claimed in
            defer { claimed = true }
            return !claimed
        }
    }
    var claimed: Bool { state.withLock { $0 } }
}
