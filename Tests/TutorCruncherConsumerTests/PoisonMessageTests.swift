import AMQPClient
import Foundation
import TestSupport
import Testing
import TutorCruncherConsumer

/// A message that kills the consumer, or that it keeps requeueing, ends in the dead-letter queue
/// after a bounded number of deliveries, for classic queues (counted in a header on a re-queued
/// copy) and quorum queues (the broker's `x-delivery-count`).
@Suite struct PoisonMessageTests {
    @Test(arguments: [TutorCruncherConsumerConfiguration.QueueType.classic, .quorum])
    func messageThatKillsTheConsumerEndsInTheDeadLetterQueue(queueType: TutorCruncherConsumerConfiguration.QueueType) async throws {
        let exchange = uniqueExchange()
        var configuration = consumerConfiguration(exchange: exchange, actions: [.raisedInvoice])
        configuration.queueType = queueType
        configuration.retryPolicy = .init(maxAttempts: 3, initialDelay: .zero, maxUnsettledDeliveries: 3)
        configuration.shutdownTimeout = .milliseconds(100)
        let handedOut = Recorder<String>()
        let redeliveredFlags = Recorder<Bool>()
        var deadLetters: QueueProbe?
        var published: [(eventID: String, body: [UInt8])] = []
        var rounds = 0
        // Each round is one consumer process that takes the event and dies without settling it.
        while rounds < 8, (deadLetters?.messages.count ?? 0) == 0 {
            rounds += 1
            let consumer = TutorCruncherConsumer(configuration: configuration, logger: quietLogger)
            let before = handedOut.count
            try await withServices([consumer]) {
                let reader = Task {
                    for try await delivery in consumer.deliveries {  // never settled
                        redeliveredFlags.append(delivery.redelivered)
                        handedOut.append(delivery.event.eventID)
                    }
                }
                defer { reader.cancel() }
                try await waitUntil("consumer connected") { consumer.isConnected }
                if deadLetters == nil {
                    deadLetters = try await QueueProbe(existingQueue: configuration.deadLetterQueue)
                    published = try await publishWebhookBodies(exchange: exchange, bodies: [Webhooks.body(actions: ["RAISED_INVOICE"])])
                        .map { ($0.eventID, $0.body) }
                }
                try await waitUntil(timeout: .seconds(15), "round \(rounds): event handed out or dead-lettered") {
                    handedOut.count > before || (deadLetters?.messages.count ?? 0) > 0
                }
            }
        }
        let probe = try #require(deadLetters)
        defer { Task { await probe.stop() } }
        let dead = try await probe.waitForMessages(count: 1, timeout: .seconds(5))
        print("\(queueType) queue: consumer killed \(handedOut.count) times, dead-lettered after \(rounds) rounds")
        #expect(handedOut.all == Array(repeating: published[0].eventID, count: 3), "handed out exactly maxUnsettledDeliveries times")
        #expect(redeliveredFlags.all == [false, true, true], "a re-queued copy still reports the redelivery")
        #expect(dead.count == 1)
        #expect(dead.first?.body == published[0].body)
        guard case .string(let error)? = dead.first?.properties.header(ConsumerHeader.error) else {
            Issue.record("no tc-error header")
            return
        }
        #expect(error.contains("delivered 3 times without being settled"))
        let admin = AMQPAdmin(connection: RabbitMQNode.shared.connection)
        // The broker applies the original's ack asynchronously: wait for the queue to be empty.
        try await waitUntil(timeout: .seconds(10), "the original acknowledged away") {
            try await admin.messageCount(queue: configuration.queue) == 0
        }
    }

    @Test(arguments: [TutorCruncherConsumerConfiguration.QueueType.classic, .quorum])
    func messageRequeuedForEverEndsInTheDeadLetterQueue(queueType: TutorCruncherConsumerConfiguration.QueueType) async throws {
        let exchange = uniqueExchange()
        var configuration = consumerConfiguration(exchange: exchange, actions: [.raisedInvoice])
        configuration.queueType = queueType
        configuration.retryPolicy = .init(maxAttempts: 3, initialDelay: .zero, maxUnsettledDeliveries: 4)
        let consumer = TutorCruncherConsumer(configuration: configuration, logger: quietLogger)
        let handedOut = Recorder<String>()
        try await withServices([consumer]) {
            let reader = Task {
                for try await delivery in consumer.deliveries {
                    handedOut.append(delivery.event.eventID)
                    try? await delivery.nack(requeue: true)  // "not now", every time
                }
            }
            defer { reader.cancel() }
            try await waitUntil("consumer connected") { consumer.isConnected }
            let deadLetters = try await QueueProbe(existingQueue: configuration.deadLetterQueue)
            defer { Task { await deadLetters.stop() } }
            let published = try await publishWebhookBodies(exchange: exchange, bodies: [Webhooks.body(actions: ["RAISED_INVOICE"])])
            let dead = try await deadLetters.waitForMessages(count: 1, timeout: .seconds(20))
            #expect(dead.first?.body == published[0].body)
            #expect(handedOut.all == Array(repeating: published[0].eventID, count: 4))
        }
    }
}
