import AMQPClient
import Foundation
import TestSupport
import Testing
import TutorCruncherConsumer

/// Retries, dead-lettering and prefetch, against the real broker.
@Suite struct ConsumerFailureTests {
    @Test func throwingHandlerIsRetriedAfterGrowingWaitsThenDeadLetteredWithTheError() async throws {
        let exchange = uniqueExchange()
        var configuration = consumerConfiguration(exchange: exchange, actions: [.raisedInvoice])
        configuration.retryPolicy = .init(maxAttempts: 3, initialDelay: .milliseconds(400), multiplier: 2, jitter: 0)
        let attempts = Recorder<(id: String, at: ContinuousClock.Instant)>()
        let log = CapturedLog()
        let processor = TutorCruncherEventProcessor(configuration: configuration, logger: log.logger(label: "consumer-under-test")) { event in
            attempts.append((event.eventID, .now))
            throw HandlerFailure(attempt: attempts.count)
        }
        try await withServices([processor]) {
            try await waitUntil("consumer connected") { processor.consumer.isConnected }
            let deadLetters = try await QueueProbe(existingQueue: configuration.deadLetterQueue)
            defer { Task { await deadLetters.stop() } }
            let envelopes = try await publishWebhookBodies(exchange: exchange, bodies: [Webhooks.body(actions: ["RAISED_INVOICE"])])
            let dead = try #require(try await deadLetters.waitForMessages(count: 1).first)
            #expect(attempts.all.map(\.id) == Array(repeating: envelopes[0].eventID, count: 3))
            // Each attempt came at least the policy's wait after the one before: 400 ms, then 800 ms.
            let times = attempts.all.map(\.at)
            let gaps = zip(times.dropFirst(), times).map { $0 - $1 }
            print("retry spacing: \(gaps.map { "\($0.components.seconds * 1000 + $0.components.attoseconds / 1_000_000_000_000_000) ms" })")
            #expect(gaps.count == 2 && gaps[0] >= .milliseconds(400) && gaps[1] >= .milliseconds(800), "\(gaps)")
            #expect(dead.body == envelopes[0].body)
            #expect(dead.properties.messageID == envelopes[0].eventID)
            #expect(dead.properties.header(ConsumerHeader.attempt) == .int(3))
            #expect(dead.properties.header(ConsumerHeader.originalRoutingKey) == .string("RAISED_INVOICE"))
            #expect(dead.properties.header(ConsumerHeader.originalQueue) == .string(configuration.queue))
            guard case .string(let error)? = dead.properties.header(ConsumerHeader.error) else {
                Issue.record("no tc-error header")
                return
            }
            #expect(error.contains("failed 3 times"))
            #expect(error.contains("billing system said no (attempt 3)"))
            // And one error line says so, with the event and the error.
            let lines = log.all.filter { $0.hasPrefix("error event failed its last attempt; dead-lettering") }
            #expect(lines.count == 1 && lines[0].contains(envelopes[0].eventID) && lines[0].contains("attempt 3"), "\(log.all)")
            let admin = AMQPAdmin(connection: RabbitMQNode.shared.connection)
            #expect(try await admin.messageCount(queue: configuration.waitQueue(for: .milliseconds(400))) == 0)
        }
        #expect(try await messagesLeft(in: configuration.queue) == 0, "the dead-lettered original was not acknowledged")
    }

    @Test func aRetryWhoseWaitQueueWasDeletedIsNotLost() async throws {
        let exchange = uniqueExchange()
        var configuration = consumerConfiguration(exchange: exchange, actions: [.raisedInvoice])
        configuration.retryPolicy = .init(maxAttempts: 3, initialDelay: .seconds(1), jitter: 0)
        let attempts = Recorder<Int>()
        let processor = TutorCruncherEventProcessor(configuration: configuration, logger: quietLogger) { _, context in
            attempts.append(context.attempt)
            throw HandlerFailure(attempt: attempts.count)
        }
        let admin = AMQPAdmin(connection: RabbitMQNode.shared.connection)
        try await withServices([processor]) {
            try await waitUntil("consumer connected") { processor.consumer.isConnected }
            // An operator deletes the wait queue of the first retry while the service runs.
            _ = try await admin.deleteQueue(configuration.waitQueue(for: .seconds(1)))
            _ = try await publishWebhookBodies(exchange: exchange, bodies: [Webhooks.body(actions: ["RAISED_INVOICE"])])
            // The copy reaches no queue: the original is requeued (not acknowledged) and handled again.
            try await waitUntil("handled again after the failed retry") { attempts.count >= 2 }
        }
        #expect(attempts.all.prefix(2) == [1, 1], "the first attempt again: the retry copy never existed")
    }

    @Test func anEventDeadLetteredAfterItsQueueWasDeletedIsNotLost() async throws {
        let exchange = uniqueExchange()
        var configuration = consumerConfiguration(exchange: exchange, actions: [.raisedInvoice])
        configuration.retryPolicy = .init(maxAttempts: 1, initialDelay: .zero)
        let processor = TutorCruncherEventProcessor(configuration: configuration, logger: quietLogger) { _ in
            throw HandlerFailure(attempt: 1)
        }
        let admin = AMQPAdmin(connection: RabbitMQNode.shared.connection)
        try await withServices([processor]) {
            try await waitUntil("consumer connected") { processor.consumer.isConnected }
            // An operator deletes the dead-letter queue to clear it while the service runs. A copy
            // sent there reaches no queue, and rejecting the event would route it there too.
            _ = try await admin.deleteQueue(configuration.deadLetterQueue)
            let envelopes = try await publishWebhookBodies(exchange: exchange, bodies: [Webhooks.body(actions: ["RAISED_INVOICE"])])
            try await waitUntil("the dead-letter queue declared again, holding the event") {
                (try? await admin.peek(queue: configuration.deadLetterQueue, limit: 10).count) == 1
            }
            let dead = try await admin.peek(queue: configuration.deadLetterQueue, limit: 10)
            #expect(dead.first?.properties.messageID == envelopes[0].eventID)
            guard case .string(let error)? = dead.first?.properties.header(ConsumerHeader.error) else {
                Issue.record("no tc-error header")
                return
            }
            #expect(error.contains("billing system said no"))
        }
        #expect(try await messagesLeft(in: configuration.queue) == 0, "the original was not acknowledged")
    }

    /// An event whose properties fill the frame travels, but no copy of it with an attempt count
    /// can: instead of its retry, it goes to the dead-letter queue as it is. (Requeued as it was, it
    /// came straight back and failed again, for ever: a classic queue's redelivery cannot be
    /// recorded on a copy either.)
    ///
    /// With waits, a copy must also leave room for the `x-death` header the wait queue adds when it
    /// sends it back: one that only just fitted came back larger than the frame, unreadable.
    @Test(arguments: [false, true])
    func aRetryWhoseCopyCannotBeEncodedIsDeadLetteredInsteadOfComingBackForEver(withWaits: Bool) async throws {
        let exchange = uniqueExchange()
        var configuration = consumerConfiguration(exchange: exchange)
        if withWaits { configuration.retryPolicy = .init(maxAttempts: 3, initialDelay: .milliseconds(200), jitter: 0) }
        let runs = Recorder<String>()
        let processor = TutorCruncherEventProcessor(configuration: configuration, logger: quietLogger) { event in
            runs.append(event.eventID)
            throw HandlerFailure(attempt: runs.count)
        }
        // Padded until one more byte would not fit in RabbitMQ's (and rabbitmq-c's) default frame.
        let frameSize = 131_072
        let plain = try #require(webhookMessages(exchange: exchange, bodies: [Webhooks.body(actions: ["LOGIN"])]).messages.first)
        func padded(_ length: Int) -> AMQPOutboundMessage {
            var message = plain
            message.properties.headers.append(("x-padding", .string(String(repeating: "p", count: length))))
            return message
        }
        var (fits, tooLong) = (0, frameSize)
        while tooLong - fits > 1 {
            let middle = (fits + tooLong) / 2
            if padded(middle).encodingProblem(frameSize: frameSize) == nil { fits = middle } else { tooLong = middle }
        }
        // With waits, a copy that would fit the frame, but not with room for the wait queue's headers.
        let message = padded(withWaits ? fits - 200 : fits)
        var copy = message
        copy.properties.headers.append(("tc-attempt", .int(2)))  // the smallest header a retry copy adds
        #expect(message.encodingProblem(frameSize: frameSize) == nil)
        #expect((copy.encodingProblem(frameSize: frameSize) == nil) == withWaits)

        let admin = AMQPAdmin(connection: RabbitMQNode.shared.connection)
        try await withServices([processor]) {
            try await waitUntil("consumer connected") { processor.consumer.isConnected }
            try await publishMessages(exchange: exchange, [message])
            try await waitUntil("the event in the dead-letter queue") {
                try await admin.messageCount(queue: configuration.deadLetterQueue) == 1
            }
        }
        #expect(runs.count == 1, "handler runs: \(runs.count)")
        #expect(try await messagesLeft(in: configuration.queue) == 0)
        // Sent by the consumer, not rejected: an `x-death` header from the broker would take it past
        // the frame size, and no one could read it from the dead-letter queue (see `OversizeFrameTests`).
        // With as much of the annotation as fits: with the room a wait queue needs, the routing key
        // (so a requeue from the dead-letter queue keeps its action); one byte short of the frame, nothing.
        let deadLettered = try await admin.peek(queue: configuration.deadLetterQueue, limit: 10)
        #expect(deadLettered.map(\.body) == [message.body])
        #expect(deadLettered.first?.properties.header("x-death") == nil)
        let routingKey = deadLettered.first?.properties.header(ConsumerHeader.originalRoutingKey)
        #expect(routingKey == (withWaits ? .string("LOGIN") : nil))
    }

    @Test func aWaitingEventHoldsNoPrefetchSlotAndSurvivesARestartOfTheService() async throws {
        let exchange = uniqueExchange()
        var configuration = consumerConfiguration(exchange: exchange, actions: [.raisedInvoice, .login], prefetch: 1)
        configuration.retryPolicy = .init(maxAttempts: 2, initialDelay: .seconds(20), jitter: 0)
        configuration.confirmTimeout = .seconds(30)  // the wait queue was declared a moment ago
        let handled = Recorder<String>()
        let failing = TutorCruncherEventProcessor(configuration: configuration, logger: quietLogger) { event in
            handled.append(event.action.rawValue)
            if event.action == .raisedInvoice { throw HandlerFailure(attempt: 1) }
        }
        let admin = AMQPAdmin(connection: RabbitMQNode.shared.connection)
        let waitQueue = configuration.waitQueue(for: .seconds(20))
        try await withServices([failing]) {
            try await waitUntil("consumer connected") { failing.consumer.isConnected }
            _ = try await publishWebhookBodies(exchange: exchange, bodies: [Webhooks.body(actions: ["RAISED_INVOICE"])])
            _ = try await publishWebhookBodies(exchange: exchange, bodies: [Webhooks.body(actions: ["LOGIN"])])
            // With one prefetch slot, LOGIN is handled while RAISED_INVOICE waits on the broker.
            try await waitUntil(timeout: .seconds(60), "LOGIN handled while the invoice waits") {
                guard handled.all == ["RAISED_INVOICE", "LOGIN"] else { return false }
                return try await admin.messageCount(queue: waitQueue) == 1
            }
        }
        // The service stopped; the event still waits in the durable wait queue and comes back to
        // the next instance for its second attempt.
        #expect(try await admin.messageCount(queue: waitQueue) == 1)
        let secondAttempt = Recorder<Int>()
        let restarted = TutorCruncherEventProcessor(configuration: configuration, logger: quietLogger) { _ in secondAttempt.append(1) }
        try await withServices([restarted]) {
            try await waitUntil(timeout: .seconds(60), "second attempt after the restart") { secondAttempt.count == 1 }
        }
    }

    @Test(arguments: [TutorCruncherConsumerConfiguration.UnrecognisedBodies.skip, .deadLetter])
    func aCatchAllConsumerSkipsOrDeadLettersUnrecognisedBodiesAsConfigured(handling: TutorCruncherConsumerConfiguration.UnrecognisedBodies) async throws {
        let exchange = uniqueExchange()
        var configuration = consumerConfiguration(exchange: exchange)  // every action: bound to '#'
        configuration.unrecognisedBodies = handling
        let handled = Recorder<String>()
        let processor = TutorCruncherEventProcessor(configuration: configuration, logger: quietLogger) { handled.append($0.eventID) }
        let admin = AMQPAdmin(connection: RabbitMQNode.shared.connection)
        try await withServices([processor]) {
            try await waitUntil("consumer connected") { processor.consumer.isConnected }
            try await publishRaw(exchange: exchange, routingKey: "unrecognised", body: Array("<html>not an event</html>".utf8))
            let good = try await publishWebhookBodies(exchange: exchange, bodies: [Webhooks.body(actions: ["LOGIN"])])
            // RabbitMQ keeps order within the queue: once the event after it is handled, the
            // unrecognised body has been dealt with.
            try await waitUntil("the event after it handled") { handled.all == [good[0].eventID] }
            switch handling {
            case .skip:
                #expect(try await admin.messageCount(queue: configuration.deadLetterQueue) == 0)
            case .deadLetter, .handle:
                let deadLetters = try await QueueProbe(existingQueue: configuration.deadLetterQueue)
                defer { Task { await deadLetters.stop() } }
                let dead = try #require(try await deadLetters.waitForMessages(count: 1).first)
                #expect(dead.body == Array("<html>not an event</html>".utf8))
                guard case .string(let error)? = dead.properties.header(ConsumerHeader.error) else {
                    Issue.record("no tc-error header")
                    return
                }
                #expect(error.hasPrefix("unrecognised"))
            }
        }
        #expect(try await messagesLeft(in: configuration.queue) == 0, "the unrecognised body was not acknowledged")
    }

    @Test func consumersThatAskGetUnrecognisedBodiesAsTypedValues() async throws {
        let exchange = uniqueExchange()
        var configuration = consumerConfiguration(exchange: exchange)
        let unrecognised = Recorder<UnrecognisedMessage>()
        configuration.unrecognisedBodies = .handle { unrecognised.append($0) }
        let processor = TutorCruncherEventProcessor(configuration: configuration, logger: quietLogger) { _ in }
        try await withServices([processor]) {
            try await waitUntil("consumer connected") { processor.consumer.isConnected }
            try await publishRaw(exchange: exchange, routingKey: "unrecognised", body: Array("<html>not an event</html>".utf8))
            try await waitUntil("handed over") { unrecognised.count == 1 }
        }
        #expect(try await messagesLeft(in: configuration.queue) == 0, "the unrecognised body was not acknowledged")
        #expect(unrecognised.all.first?.body == Array("<html>not an event</html>".utf8))
        #expect(unrecognised.all.first?.reason == "not a TutorCruncher event")
    }

    @Test func undecodableMessageIsDeadLetteredAtOnceAndConsumptionContinues() async throws {
        let exchange = uniqueExchange()
        let configuration = consumerConfiguration(exchange: exchange, actions: [.raisedInvoice])
        let handled = Recorder<String>()
        let processor = TutorCruncherEventProcessor(configuration: configuration, logger: quietLogger) { handled.append($0.eventID) }
        try await withServices([processor]) {
            try await waitUntil("consumer connected") { processor.consumer.isConnected }
            let deadLetters = try await QueueProbe(existingQueue: configuration.deadLetterQueue)
            defer { Task { await deadLetters.stop() } }
            try await publishRaw(exchange: exchange, routingKey: "RAISED_INVOICE", body: Array("{not json".utf8))
            try await publishRaw(exchange: exchange, routingKey: "RAISED_INVOICE", body: Array(#"{"action": "RAISED_INVOICE"}"#.utf8))
            let good = try await publishWebhookBodies(exchange: exchange, bodies: [Webhooks.body(actions: ["RAISED_INVOICE"])])
            let dead = try await deadLetters.waitForMessages(count: 2)
            #expect(dead.map(\.body) == [Array("{not json".utf8), Array(#"{"action": "RAISED_INVOICE"}"#.utf8)])
            for message in dead {
                guard case .string(let error)? = message.properties.header(ConsumerHeader.error) else {
                    Issue.record("no tc-error header")
                    continue
                }
                #expect(error.hasPrefix("undecodable"))
            }
            try await waitUntil("good event handled") { handled.all == [good[0].eventID] }
        }
    }

    @Test func brokerHonoursPrefetchForTheSequenceAPI() async throws {
        let exchange = uniqueExchange()
        let configuration = consumerConfiguration(exchange: exchange, prefetch: 3)
        let consumer = TutorCruncherConsumer(configuration: configuration, logger: quietLogger)
        let admin = AMQPAdmin(connection: RabbitMQNode.shared.connection)
        let received = Recorder<TutorCruncherDelivery>()
        try await withServices([consumer]) {
            try await waitUntil("consumer connected") { consumer.isConnected }
            let reader = Task {
                for try await delivery in consumer.deliveries { received.append(delivery) }
            }
            defer { reader.cancel() }
            let bodies = (0..<10).map { Webhooks.body(actions: ["LOGIN"], subjectID: $0) }
            _ = try await publishWebhookBodies(exchange: exchange, bodies: bodies)
            // Held unacknowledged: the broker stops at 3 and keeps 7 ready.
            try await waitUntil("3 in flight, 7 ready") {
                let ready = try await admin.messageCount(queue: configuration.queue)
                return received.count == 3 && ready == 7
            }
            #expect(received.count == 3)
            // Acknowledging frees slots until all 10 are through.
            var acknowledged = 0
            while acknowledged < 10 {
                try await waitUntil("next delivery") { received.count > acknowledged }
                try await received.all[acknowledged].ack()
                acknowledged += 1
            }
            #expect(received.count == 10)
            #expect(Set(received.all.map(\.event.eventID)).count == 10)
        }
    }

    @Test func handlerConcurrencyNeverExceedsPrefetch() async throws {
        let exchange = uniqueExchange()
        let configuration = consumerConfiguration(exchange: exchange, prefetch: 4)
        let handlers = GatedHandlers()
        let processor = TutorCruncherEventProcessor(configuration: configuration, logger: quietLogger, handler: handlers.handler)
        let admin = AMQPAdmin(connection: RabbitMQNode.shared.connection)
        try await withServices([processor]) {
            try await waitUntil("consumer connected") { processor.consumer.isConnected }
            _ = try await publishWebhookBodies(exchange: exchange, bodies: (0..<10).map { Webhooks.body(actions: ["LOGIN"], subjectID: $0) })
            try await waitUntil("4 handlers running, 6 ready") {
                let ready = try await admin.messageCount(queue: configuration.queue)
                return handlers.meter.current == 4 && ready == 6
            }
            try await handlers.openAndWait(untilHandled: 10)
        }
        #expect(handlers.meter.peak == 4)
    }
}
