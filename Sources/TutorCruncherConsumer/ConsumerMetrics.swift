import DurationUnits
import Metrics
import TutorCruncher

/// The consumer library's metrics, through swift-metrics (the service bootstraps a backend, such as
/// swift-prometheus, and exports them). Label values are bounded: actions are TutorCruncher's
/// catalogue (anything else counts as `other`), outcomes a fixed set. Thread-safe.
public enum ConsumerMetrics {
    /// Every metric name the consumer library exports.
    public static let names = [
        "tcconsumer_deliveries_total", "tcconsumer_handler_duration_seconds", "tcconsumer_retries_total",
        "tcconsumer_dead_letters_total", "tcconsumer_deliveries_in_flight",
    ]

    /// What became of one delivery.
    enum Outcome: String {
        case acknowledged, retried, deadLettered = "dead_lettered", redelivered
        /// An `unrecognised` body acknowledged without a handler (``TutorCruncherConsumerConfiguration/UnrecognisedBodies/skip``).
        case skipped
    }

    private static let handlerDuration = Timer(label: "tcconsumer_handler_duration_seconds")
    private static let retries = Counter(label: "tcconsumer_retries_total")
    private static let inFlight = Meter(label: "tcconsumer_deliveries_in_flight")

    static func handlerStarted() { inFlight.increment() }

    static func handlerEnded(after duration: Duration?) {
        inFlight.decrement()
        if let duration {
            handlerDuration.recordNanoseconds(duration.clampedNanoseconds)
        }
    }

    static func retried() { retries.increment() }

    static func delivered(action: String, outcome: Outcome) {
        Counter(label: "tcconsumer_deliveries_total", dimensions: [("action", boundedAction(action)), ("outcome", outcome.rawValue)])
            .increment()
    }

    static func deadLettered(reason: String) {
        Counter(label: "tcconsumer_dead_letters_total", dimensions: [("reason", reason)]).increment()
    }

    static func boundedAction(_ action: String) -> String {
        TutorCruncherAction(rawValue: action).isKnown ? action : "other"
    }
}
