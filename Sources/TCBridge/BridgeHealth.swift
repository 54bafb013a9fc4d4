import AMQPClient
import TutorCruncher

/// The health and readiness policy, apart from HTTP: what `/health` and `/ready` answer for a
/// broker connection state and a spool state. Pure; tested without a server.
///
/// - Healthy: the broker connection is up (blocked counts as up: publishing resumes by itself).
/// - Ready (for load balancers): a webhook can be accepted durably right now, through the broker
///   or the spool, and what is accepted will be published: not while the broker refuses the
///   bridge's configuration, which does not clear by itself (spooling would only fill the spool).
public struct BridgeHealth: Sendable, Equatable {
    /// What the spool can take right now; `nil` without a spool.
    public struct SpoolState: Sendable, Equatable {
        public var records: Int
        public var bytes: Int64
        public var maxBytes: Int64
        public var corruptRecordsSetAside: Int
        /// Why the spool takes no appends (disk full, unwritable), if it does not.
        public var unavailableReason: String?
        /// How long the oldest record has waited; `nil` when empty.
        public var oldestRecordAge: Duration?

        public init(
            records: Int, bytes: Int64, maxBytes: Int64, corruptRecordsSetAside: Int = 0, unavailableReason: String? = nil,
            oldestRecordAge: Duration? = nil
        ) {
            self.records = records
            self.bytes = bytes
            self.maxBytes = maxBytes
            self.corruptRecordsSetAside = corruptRecordsSetAside
            self.unavailableReason = unavailableReason
            self.oldestRecordAge = oldestRecordAge
        }

        public var acceptsAppends: Bool { unavailableReason == nil && bytes < maxBytes }
    }

    public var broker: AMQPConnectionState
    public var spool: SpoolState?

    public init(broker: AMQPConnectionState, spool: SpoolState?) {
        self.broker = broker
        self.spool = spool
    }

    public var isHealthy: Bool {
        switch broker {
        case .connected, .blocked: true
        case .connecting, .disconnected, .misconfigured, .closed: false
        }
    }

    /// The broker refuses the bridge's configuration (credentials, permissions, a declaration).
    public var refusal: String? {
        if case .misconfigured(let reason) = broker { return reason }
        return nil
    }

    public var isReady: Bool {
        refusal == nil && (broker == .connected || spool?.acceptsAppends == true)
    }

    /// `/health`: 200 when healthy, else 503; the broker's state and the spool's depth.
    public var healthAnswer: JSONAnswer {
        var body = JSONObject()
        switch broker {
        case .connected: body["broker"] = .string("connected")
        case .blocked(let reason):
            body["broker"] = .string("blocked")
            body["reason"] = .string(reason)
        case .connecting: body["broker"] = .string("connecting")
        case .disconnected: body["broker"] = .string("disconnected")
        case .misconfigured(let reason):
            body["broker"] = .string("misconfigured")
            body["reason"] = .string(reason)
        case .closed: body["broker"] = .string("closed")
        }
        body["status"] = .string(isHealthy ? "ok" : "unavailable")
        if let spool {
            var state = JSONObject(["records": .number(String(spool.records)), "bytes": .number(String(spool.bytes))])
            if spool.corruptRecordsSetAside > 0 { state["corrupt_records_set_aside"] = .number(String(spool.corruptRecordsSetAside)) }
            body["spool"] = .object(state)
        }
        return JSONAnswer(status: isHealthy ? 200 : 503, body: body)
    }

    /// `/ready`: 200 when ready, else 503; whether the broker and the spool can take events.
    public var readinessAnswer: JSONAnswer {
        var body = JSONObject([
            "ready": .bool(isReady), "broker": .bool(broker == .connected), "spool": .bool(spool?.acceptsAppends == true),
        ])
        if let refusal { body["reason"] = .string("the broker refuses the bridge's configuration: \(refusal)") }
        return JSONAnswer(status: isReady ? 200 : 503, body: body)
    }
}

/// An HTTP status with a small JSON body.
public struct JSONAnswer: Sendable, Equatable {
    public var status: Int
    public var body: JSONObject

    public init(status: Int, body: JSONObject) {
        self.status = status
        self.body = body
    }
}
