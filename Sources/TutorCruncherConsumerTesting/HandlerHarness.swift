import Synchronization
import TutorCruncherConsumer
import TutorCruncherEvents

/// Runs a handler the way ``TutorCruncherEventProcessor`` does, in memory, and records what the
/// processor would do with each event: acknowledge it, retry it after a wait, or dead-letter it.
/// The decisions come from the same retry policy code the processor uses. Thread-safe.
///
/// ```swift
/// let harness = HandlerHarness(retryPolicy: .init(maxAttempts: 3, jitter: 0)) { event, _ in
///     try await billing.record(event)
/// }
/// let outcome = await harness.deliver(try TestEvents.event(.clientPaidInvoice, subject: TestSubjects.invoice()))
/// #expect(outcome == .acknowledged)
/// ```
public final class HandlerHarness: Sendable {
    /// What the processor does with a delivery once its handler returned or threw.
    public enum Outcome: Sendable, Equatable {
        case acknowledged
        /// Handled again after this wait, as the next attempt.
        case retried(after: Duration)
        case deadLettered(reason: String)
    }

    /// One delivery and what became of it.
    public struct Decision: Sendable {
        public let eventID: String
        public let attempt: Int
        public let outcome: Outcome
    }

    public let retryPolicy: TutorCruncherConsumerConfiguration.RetryPolicy
    private let handler: TutorCruncherEventProcessor.ContextHandler
    private let recorded = Mutex<[Decision]>([])

    public init(
        retryPolicy: TutorCruncherConsumerConfiguration.RetryPolicy = .init(),
        handler: @escaping TutorCruncherEventProcessor.ContextHandler
    ) {
        self.retryPolicy = retryPolicy
        self.handler = handler
    }

    /// Every decision so far, in order.
    public var decisions: [Decision] { recorded.withLock { $0 } }

    /// Delivers `event` as attempt `attempt` (a redelivery when `redelivered`), runs the handler
    /// and returns (and records) the processor's decision.
    @discardableResult
    public func deliver(_ event: TutorCruncherEvent, attempt: Int = 1, redelivered: Bool = false, headers: [(String, AMQPHeaderValue)] = [])
        async -> Outcome
    {
        let context = TutorCruncherDeliveryContext(
            attempt: attempt, redelivered: redelivered, messageID: event.eventID, routingKey: event.action.rawValue, headers: headers)
        let outcome: Outcome
        do {
            try await handler(event, context)
            outcome = .acknowledged
        } catch {
            switch retryPolicy.decision(afterFailedAttempt: attempt, error: "\(error)") {
            case .retry(let wait): outcome = .retried(after: wait)
            case .deadLetter(let reason): outcome = .deadLettered(reason: reason)
            }
        }
        recorded.withLock { $0.append(Decision(eventID: event.eventID, attempt: attempt, outcome: outcome)) }
        return outcome
    }

    /// Delivers `event` again and again, as the broker would after each retry, until it is
    /// acknowledged or dead-lettered; returns every outcome (the waits are not slept).
    public func deliverUntilSettled(_ event: TutorCruncherEvent) async -> [Outcome] {
        var outcomes: [Outcome] = []
        var attempt = 1
        while true {
            let outcome = await deliver(event, attempt: attempt)
            outcomes.append(outcome)
            guard case .retried = outcome else { return outcomes }
            attempt += 1
        }
    }
}
