import AMQPClient
import DurableSpool
import Logging
import Metrics
import ServiceLifecycle
import Synchronization

/// Drains the spool to the broker whenever the publisher is connected: publishes each record's
/// messages with confirms and removes a record only once all its messages are confirmed.
///
/// A `Service`. On graceful shutdown it stops leasing; a batch in flight finishes (or is released
/// back to the spool). Records an earlier run left are drained the same way.
///
/// Nothing loops for ever: a record whose messages cannot be encoded is set aside at once, and a
/// record the broker keeps refusing (the channel closed while it was published alone) is set
/// aside after `maxAttempts` such refusals. Failures that say nothing about the record never count:
/// not connected, blocked, a connection lost, a confirm that did not come, and a `basic.nack`
/// (RabbitMQ nacks for its own reasons: a queue without a leader, a full `reject-publish` queue,
/// a channel gone stale after a failover; the record waits in the spool until it is taken, retried
/// with a backoff that grows to a minute while nacks go on, since every attempt may deliver
/// another copy to the queues that did take it). Every failed attempt is counted by kind
/// (`tcbridge_spool_forward_failures_total{kind}`) and logged with it. Set-aside records are copied to the
/// spool's `corrupt/` directory, logged at error level and counted
/// (`tcbridge_spool_records_set_aside_total`).
public struct SpoolForwarder: Service, Sendable {
    let spool: DurableSpool
    let publisher: any EventPublishing
    let logger: Logger
    /// Records published concurrently per round.
    let batchSize: Int
    let idleInterval: Duration
    /// Failed forwarding attempts after which a record is set aside.
    let maxAttempts: Int
    private let failures = FailureCounts()

    public init(
        spool: DurableSpool, publisher: any EventPublishing, logger: Logger, batchSize: Int = 64,
        idleInterval: Duration = .milliseconds(100), maxAttempts: Int = 5
    ) {
        self.spool = spool
        self.publisher = publisher
        self.logger = logger
        self.batchSize = batchSize
        self.idleInterval = idleInterval
        self.maxAttempts = max(1, maxAttempts)
    }

    public func run() async throws {
        await cancelWhenGracefulShutdown {
            var failures = 0
            while !Task.isCancelled {
                guard publisher.state == .connected, spool.depth.records > 0 else {
                    try? await Task.sleep(for: idleInterval)
                    continue
                }
                switch await forwardBatch() {
                case .forwarded:
                    failures = 0
                case .failed(let nacked):
                    failures += 1
                    let cap: Duration = nacked ? .seconds(60) : .seconds(5)
                    try? await Task.sleep(for: min(cap, idleInterval * Double(1 << min(failures, 10))))
                }
            }
        }
    }

    /// What one round of forwarding came to.
    enum BatchOutcome: Equatable {
        case forwarded
        /// Some records went back to the spool; `nacked`: the broker nacked them (back off longer).
        case failed(nacked: Bool)
    }

    /// Forwards up to `batchSize` records; `false` when any failed (they go back to the spool).
    func forwardOneBatch() async -> Bool {
        await forwardBatch() == .forwarded
    }

    func forwardBatch() async -> BatchOutcome {
        var records = await spool.lease(maxRecords: batchSize)
        // Nothing leased while records wait (one could not be read): back off rather than spin.
        guard !records.isEmpty else { return spool.depth.records == 0 ? .forwarded : .failed(nacked: false) }
        // A record that was refused before goes alone, so its refusal is its own and not a neighbour's.
        var alone = records.count == 1
        if let suspect = records.first(where: { failures.isSuspect($0.id) }) {
            await spool.release(records.filter { $0.id != suspect.id }.map(\.id))
            records = [suspect]
            alone = true
        }
        // Up to `batchSize` records of up to a whole body's events each: a large batch is decoded
        // off the event loops. (The sum counts bytes already in memory: it cannot overflow.)
        let leased = records
        let decoded = await HeavyWork.run(bytes: records.reduce(0) { $0 + $1.payload.count }) {
            leased.map { record in Result { () throws(SpooledMessages.DecodingError) in try SpooledMessages.decode(record.payload) } }
        }
        var unreadable: [SpoolRecord] = []
        var readable: [(SpoolRecord, [AMQPOutboundMessage])] = []
        for (record, result) in zip(records, decoded) {
            switch result {
            case .success(let messages):
                readable.append((record, messages))
            case .failure(let error):
                logger.error("unreadable spool record set aside", metadata: ["error": "\(error)"])
                unreadable.append(record)
            }
        }
        if !unreadable.isEmpty { await setAside(unreadable, reason: "unreadable") }
        let outcomes = await withTaskGroup(of: (SpoolRecord, AMQPError?).self) { group in
            for (record, messages) in readable {
                group.addTask {
                    do throws(AMQPError) {
                        try await publisher.publish(messages)
                        return (record, nil)
                    } catch {
                        return (record, error)
                    }
                }
            }
            var outcomes: [(SpoolRecord, AMQPError?)] = []
            for await outcome in group { outcomes.append(outcome) }
            return outcomes
        }
        let confirmed = outcomes.filter { $0.1 == nil }.map(\.0.id)
        var retry: [SpoolRecord.ID] = []
        var rejected: [SpoolRecord] = []
        var failureKinds: Set<String> = []
        var nacked = false
        for case (let record, let error?) in outcomes {
            let kind = "\(error.kind)"
            failureKinds.insert(kind)
            if error.kind == .nacked { nacked = true }
            Counter(label: "tcbridge_spool_forward_failures_total", dimensions: [("kind", kind)]).increment()
            switch error.kind {
            case .unencodable:
                logger.error("spooled record cannot be encoded; set aside", metadata: ["error": "\(error)"])
                rejected.append(record)
            case .channelClosed, .protocolError:
                // The broker refused something. Only a refusal of the record published alone counts.
                guard alone else {
                    failures.markSuspect(record.id)
                    retry.append(record.id)
                    continue
                }
                let attempts = failures.increment(record.id)
                if attempts >= maxAttempts {
                    logger.error(
                        "broker keeps refusing a spooled record; set aside",
                        metadata: ["attempts": "\(attempts)", "error": "\(error)"])
                    rejected.append(record)
                } else {
                    retry.append(record.id)
                }
            default:
                retry.append(record.id)  // the broker is away or slow: not the record's fault
            }
        }
        if !confirmed.isEmpty {
            await spool.acknowledge(confirmed)
            for id in confirmed { failures.clear(id) }
            Counter(label: "tcbridge_spool_forwarded_total").increment(by: confirmed.count)
        }
        if !rejected.isEmpty { await setAside(rejected, reason: "refused") }
        if !retry.isEmpty {
            await spool.release(retry)
            logger.notice(
                "spool forwarding failed; will retry",
                metadata: ["records": "\(retry.count)", "reasons": "\(failureKinds.sorted().joined(separator: ","))"])
        }
        if !confirmed.isEmpty, spool.depth.records == 0 {
            logger.info("spool drained")
        }
        return retry.isEmpty ? .forwarded : .failed(nacked: nacked)
    }

    private func setAside(_ records: [SpoolRecord], reason: String) async {
        await spool.setAside(records)
        for record in records { failures.clear(record.id) }
        Counter(label: "tcbridge_spool_records_set_aside_total", dimensions: [("reason", reason)]).increment(by: records.count)
    }
}

/// Failed attempts per spool record, in memory. Thread-safe.
private final class FailureCounts: Sendable {
    /// Refusals while published alone; 0 for a record only suspected (refused in company).
    private let counts = Mutex<[SpoolRecord.ID: Int]>([:])
    func isSuspect(_ id: SpoolRecord.ID) -> Bool { counts.withLock { $0[id] != nil } }
    func markSuspect(_ id: SpoolRecord.ID) { counts.withLock { $0[id] = $0[id] ?? 0 } }
    func increment(_ id: SpoolRecord.ID) -> Int {
        counts.withLock { counts in
            counts[id, default: 0] += 1
            return counts[id] ?? 0
        }
    }
    func clear(_ id: SpoolRecord.ID) { _ = counts.withLock { $0.removeValue(forKey: id) } }
}
