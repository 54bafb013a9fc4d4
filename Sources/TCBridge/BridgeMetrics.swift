import AMQPClient
import DurationUnits
import Metrics
import Synchronization
import TCBridgeContract
import TutorCruncher

/// The bridge's metrics, through swift-metrics (`tc-bridge serve` exports them in Prometheus text
/// format at `GET /metrics`). Handles on the request path are made once, on first use (after the
/// backend is bootstrapped), so a request costs a few atomic increments, not registry lookups.
///
/// Label values are bounded: outcomes are ``WebhookOutcome``, actions are TutorCruncher's catalogue
/// (anything else counts as `other`), close reasons a fixed set. Thread-safe.
public enum BridgeMetrics {
    /// Every metric name the bridge exports (the dashboard and alert rules may query only these).
    public static let names: [String] = [
        "tcbridge_webhooks_total", "tcbridge_events_total", "tcbridge_messages_published_total",
        "tcbridge_request_duration_seconds", "tcbridge_publish_confirm_duration_seconds",
        "tcbridge_broker_connected", "tcbridge_broker_blocked", "amqp_reconnects_total", "amqp_messages_returned_total",
        "tcbridge_spool_records", "tcbridge_spool_bytes", "tcbridge_spool_oldest_record_age_seconds",
        "tcbridge_spool_forwarded_total", "tcbridge_spool_forward_failures_total", "tcbridge_spool_records_set_aside_total", "tcbridge_dedup_entries",
        "tcbridge_dedup_evicted_total", "tcbridge_dedup_journal_errors_total", "tcbridge_request_time_unusable_total",
        "tcbridge_connections_closed_total", "tcbridge_connections_open",
    ]

    static let requestDuration = Timer(label: "tcbridge_request_duration_seconds")
    static let confirmDuration = Timer(label: "tcbridge_publish_confirm_duration_seconds")
    static let messagesPublished = Counter(label: "tcbridge_messages_published_total")

    private static let outcomes: [WebhookOutcome: Counter] = Dictionary(
        uniqueKeysWithValues: WebhookOutcome.allCases.map { ($0, Counter(label: "tcbridge_webhooks_total", dimensions: [("outcome", $0.rawValue)])) })

    static func webhooks(_ outcome: WebhookOutcome) -> Counter {
        outcomes[outcome] ?? Counter(label: "tcbridge_webhooks_total", dimensions: [("outcome", outcome.rawValue)])
    }

    private static let actionCounters = Mutex<[String: Counter]>([:])

    /// `tcbridge_events_total{action}`: an action outside the catalogue counts as `other`.
    static func events(action: String) -> Counter {
        let label = TutorCruncherAction(rawValue: action).isKnown || action == BridgeContract.unrecognisedRoutingKey ? action : "other"
        return actionCounters.withLock { counters in
            if let counter = counters[label] { return counter }
            let counter = Counter(label: "tcbridge_events_total", dimensions: [("action", label)])
            counters[label] = counter
            return counter
        }
    }

    /// Point-in-time values, set when `/metrics` is scraped.
    static func recordState(_ health: BridgeHealth, dedupEntries: Int?, openConnections: Int) {
        Gauge(label: "tcbridge_broker_connected").record(health.broker == .connected ? 1 : 0)
        var blocked = false
        if case .blocked = health.broker { blocked = true }
        Gauge(label: "tcbridge_broker_blocked").record(blocked ? 1 : 0)
        if let spool = health.spool {
            Gauge(label: "tcbridge_spool_records").record(spool.records)
            Gauge(label: "tcbridge_spool_bytes").record(spool.bytes)
            Gauge(label: "tcbridge_spool_oldest_record_age_seconds").record(spool.oldestRecordAge.map { Double($0.components.seconds) } ?? 0)
        }
        if let dedupEntries { Gauge(label: "tcbridge_dedup_entries").record(dedupEntries) }
        Gauge(label: "tcbridge_connections_open").record(openConnections)
    }
}

extension Timer {
    func record(_ duration: Duration) {
        recordNanoseconds(duration.clampedNanoseconds)
    }
}
