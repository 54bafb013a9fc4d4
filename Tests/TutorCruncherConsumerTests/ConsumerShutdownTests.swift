import AMQPClient
import Logging
import ServiceLifecycle
import Synchronization
import TestSupport
import Testing
import TutorCruncherConsumer

/// Graceful shutdown ends within `shutdownTimeout`: a handler still running then is cancelled, and
/// its event, never acknowledged, comes back to the next instance.
@Suite struct ConsumerShutdownTests {
    @Test func aHandlerStillRunningAtTheShutdownDeadlineIsCancelledAndItsEventComesBack() async throws {
        let exchange = uniqueExchange()
        var configuration = consumerConfiguration(exchange: exchange)
        configuration.shutdownTimeout = .seconds(1)
        let started = Recorder<String>()
        let sawCancellation = Recorder<Bool>()
        let slow = TutorCruncherEventProcessor(configuration: configuration, logger: quietLogger) { event in
            started.append(event.eventID)
            do {
                try await Task.sleep(for: .seconds(600))  // a handler stuck on a slow downstream call
            } catch {
                sawCancellation.append(error is CancellationError)
                throw error
            }
        }
        var logger = Logger(label: "services")
        logger.logLevel = .error
        let group = ServiceGroup(configuration: .init(services: [slow], logger: logger))
        let finished = Mutex(false)
        let runner = Task {
            defer { finished.withLock { $0 = true } }
            try await group.run()
        }
        try await waitUntil("consumer connected") { slow.consumer.isConnected }
        let envelopes = try await publishWebhookBodies(exchange: exchange, bodies: [Webhooks.body(actions: ["LOGIN"])])
        try await waitUntil("handler started") { started.count == 1 }
        let shutdownStarted = ContinuousClock.now
        await group.triggerGracefulShutdown()
        // The run ends once the 1 s deadline passes, not when the handler would (600 s).
        try await waitUntil(timeout: .seconds(30), "service stopped") { finished.withLock { $0 } }
        #expect(ContinuousClock.now - shutdownStarted < .seconds(20), "stopped within the deadline, give or take a busy machine")
        _ = try? await runner.value
        #expect(sawCancellation.all == [true])

        let again = Recorder<TutorCruncherDeliveryContext>()
        let next = TutorCruncherEventProcessor(configuration: configuration, logger: quietLogger) { event, context in
            if event.eventID == envelopes[0].eventID { again.append(context) }
        }
        try await withServices([next]) {
            try await waitUntil("the event delivered again") { again.count == 1 }
        }
        let context = try #require(again.all.first)
        #expect(context.redelivered)
        #expect(context.attempt == 1, "not a handler failure: the attempt count is unchanged")
        #expect(context.messageID == envelopes[0].eventID)
        #expect(context.routingKey == "LOGIN")
        #expect(context.header("tc-subject-model") == .string("Client"))
    }
}
