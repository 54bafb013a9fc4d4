import AMQPClient
import Foundation
import TestSupport
import Testing
import TutorCruncherConsumer

/// Through the real bridge: subscriptions select exactly their actions; queues get their own copies.
@Suite struct ConsumerEndToEndTests {
    @Test func consumersGetExactlyTheirActionsAndEachQueueItsOwnCopy() async throws {
        let exchange = uniqueExchange()
        let billingEvents = Recorder<TutorCruncherEvent>()
        let auditEvents = Recorder<TutorCruncherEvent>()
        let billing = TutorCruncherEventProcessor(
            configuration: consumerConfiguration(exchange: exchange, actions: [.raisedInvoice, .clientPaidInvoice]),
            logger: quietLogger) { billingEvents.append($0) }
        let audit = TutorCruncherEventProcessor(configuration: consumerConfiguration(exchange: exchange), logger: quietLogger) {
            auditEvents.append($0)
        }
        let actions = ["RAISED_INVOICE", "CLIENT_PAID_INVOICE", "CREATED_A_CLIENT", "LOGIN", "CHANGED_CONTRACTOR_STATUS"]

        try await withServices([billing, audit]) {
            try await waitUntil("consumers connected") { billing.consumer.isConnected && audit.consumer.isConnected }
            try await withLiveBridge(exchange: exchange) { port, _ in
                for (index, action) in actions.enumerated() {
                    let response = try await postSigned(port: port, body: Webhooks.body(actions: [action], subjectID: index + 1))
                    #expect(response.status == 200)
                }
                // Sentinel: a later RAISED_INVOICE; everything published before it reached the queues first.
                let sentinel = try await postSigned(port: port, body: Webhooks.body(actions: ["RAISED_INVOICE"], subjectID: 999))
                #expect(sentinel.status == 200)
            }
            try await waitUntil("billing sentinel") { billingEvents.all.contains { $0.subject?.id == 999 } }
            try await waitUntil("audit got all six") { auditEvents.count >= 6 }
        }

        let billed = billingEvents.all.sorted { ($0.subject?.id ?? 0) < ($1.subject?.id ?? 0) }
        #expect(billed.map(\.action) == [.raisedInvoice, .clientPaidInvoice, .raisedInvoice])
        #expect(billed.map(\.subject?.id) == [1, 2, 999])
        #expect(billed.allSatisfy { $0.subject?.client != nil && $0.branch == 590 })
        #expect(billed[0].subject?.raw["amount"] == .string("55.90000"))

        let audited = auditEvents.all.sorted { ($0.subject?.id ?? 0) < ($1.subject?.id ?? 0) }
        #expect(audited.map(\.action.rawValue) == actions + ["RAISED_INVOICE"])
        #expect(Set(audited.map(\.eventID)).count == 6)
    }

    @Test func duplicateFilterHandlesARedeliveredEventOnce() async throws {
        let exchange = uniqueExchange()
        var configuration = consumerConfiguration(exchange: exchange)
        configuration.duplicateFilterCapacity = 100
        let handled = Recorder<String>()
        let processor = TutorCruncherEventProcessor(configuration: configuration, logger: quietLogger) { handled.append($0.eventID) }
        let body = Webhooks.body(actions: ["CLIENT_PAID_INVOICE"])
        let sentinel = Webhooks.body(actions: ["LOGIN"])
        try await withServices([processor]) {
            try await waitUntil("consumer connected") { processor.consumer.isConnected }
            // The sender retries identical bytes: same event ids.
            let first = try await publishWebhookBodies(exchange: exchange, bodies: [body])
            _ = try await publishWebhookBodies(exchange: exchange, bodies: [body])
            let last = try await publishWebhookBodies(exchange: exchange, bodies: [sentinel])
            try await waitUntil("sentinel handled") { handled.all.contains(last[0].eventID) }
            #expect(handled.all == [first[0].eventID, last[0].eventID])
        }
        #expect(try await messagesLeft(in: configuration.queue) == 0, "the duplicate was not acknowledged")
    }
}

@Suite struct QuorumQueueTests {
    @Test func quorumQueueConsumerDeclaresItsQueuesAndReceives() async throws {
        let exchange = uniqueExchange()
        var configuration = consumerConfiguration(exchange: exchange, actions: [.raisedInvoice])
        configuration.queueType = .quorum
        let handled = Recorder<String>()
        let processor = TutorCruncherEventProcessor(configuration: configuration, logger: quietLogger) { handled.append($0.eventID) }
        try await withServices([processor]) {
            try await waitUntil("consumer connected") { processor.consumer.isConnected }
            let envelopes = try await publishWebhookBodies(exchange: exchange, bodies: [Webhooks.body(actions: ["RAISED_INVOICE"])])
            try await waitUntil("event handled") { handled.all == [envelopes[0].eventID] }
        }
        let types = try await RabbitMQNode.shared.ctl("list_queues", "name", "type", "--no-table-headers", "--quiet")
        #expect(types.contains("\(configuration.queue)\tquorum"))
        #expect(types.contains("\(configuration.deadLetterQueue)\tquorum"))
    }
}
