import AMQPClient
import Logging
import ServiceLifecycle
import TutorCruncherEvents

/// Runs a handler for every event of a subscription: returning acknowledges, throwing retries
/// (up to the retry policy's `maxAttempts`, then the event is dead-lettered with the error).
///
/// Up to `prefetch` handlers run concurrently. A `Service`: on graceful shutdown no new events are
/// taken, handlers in flight finish and are acknowledged, then the connection closes.
///
/// ```swift
/// let processor = TutorCruncherEventProcessor(configuration: configuration, logger: logger) { event in
///     guard let invoice = event.subject?.invoice else { return }
///     try await billing.record(invoice, eventID: event.eventID)
/// }
/// try await ServiceGroup(services: [processor], gracefulShutdownSignals: [.sigterm], logger: logger).run()
/// ```
public struct TutorCruncherEventProcessor: Service, Sendable {
    public typealias Handler = @Sendable (TutorCruncherEvent) async throws -> Void

    public let consumer: TutorCruncherConsumer
    private let handler: Handler
    private let logger: Logger

    public init(configuration: TutorCruncherConsumerConfiguration, logger: Logger, handler: @escaping Handler) {
        self.consumer = TutorCruncherConsumer(configuration: configuration, logger: logger)
        self.handler = handler
        self.logger = logger
    }

    public func run() async throws {
        try await withThrowingDiscardingTaskGroup { group in
            let consumer = self.consumer
            group.addTask { try await consumer.run() }
            for await delivery in consumer.deliveries {
                group.addTask { await self.process(delivery) }
            }
        }
    }

    private func process(_ delivery: TutorCruncherDelivery) async {
        ConsumerMetrics.handlerStarted()
        let started = ContinuousClock.now
        do {
            try await handler(delivery.event)
            ConsumerMetrics.handlerEnded(after: ContinuousClock.now - started)
        } catch {
            ConsumerMetrics.handlerEnded(after: nil)
            ConsumerMetrics.delivered(action: delivery.event.action.rawValue, outcome: .retried)
            logger.warning(
                "handler failed",
                metadata: [
                    "event_id": "\(delivery.event.eventID)", "action": "\(delivery.event.action)",
                    "attempt": "\(delivery.attempt)", "error": "\(error)",
                ])
            do {
                try await delivery.retry(after: error)
            } catch {
                logger.warning("could not re-queue; the broker will redeliver", metadata: ["error": "\(error)"])
            }
            return
        }
        do {
            try await delivery.ack()
            ConsumerMetrics.delivered(action: delivery.event.action.rawValue, outcome: .acknowledged)
        } catch {
            // The connection broke after handling: the broker redelivers (at-least-once).
            logger.notice("acknowledgement lost; the event will be redelivered", metadata: ["event_id": "\(delivery.event.eventID)", "error": "\(error)"])
        }
    }
}
