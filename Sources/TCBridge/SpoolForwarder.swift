import AMQPClient
import DurableSpool
import Logging
import Metrics
import ServiceLifecycle

/// Drains the spool to the broker whenever the publisher is connected: publishes each record's
/// messages with confirms and removes a record only once all its messages are confirmed.
///
/// A `Service`. On graceful shutdown it stops leasing; a batch in flight finishes (or is released
/// back to the spool). Records an earlier run left are drained the same way.
public struct SpoolForwarder: Service, Sendable {
    let spool: DurableSpool
    let publisher: any EventPublishing
    let logger: Logger
    /// Records published concurrently per round.
    let batchSize: Int
    let idleInterval: Duration

    public init(spool: DurableSpool, publisher: any EventPublishing, logger: Logger, batchSize: Int = 64, idleInterval: Duration = .milliseconds(100)) {
        self.spool = spool
        self.publisher = publisher
        self.logger = logger
        self.batchSize = batchSize
        self.idleInterval = idleInterval
    }

    public func run() async throws {
        await cancelWhenGracefulShutdown {
            var failures = 0
            while !Task.isCancelled {
                guard publisher.state == .connected, spool.depth.records > 0 else {
                    try? await Task.sleep(for: idleInterval)
                    continue
                }
                let forwarded = await forwardOneBatch()
                if forwarded {
                    failures = 0
                } else {
                    failures += 1
                    try? await Task.sleep(for: min(.seconds(5), idleInterval * Double(1 << min(failures, 6))))
                }
            }
        }
    }

    /// Forwards up to `batchSize` records; `false` when any failed (they go back to the spool).
    func forwardOneBatch() async -> Bool {
        let records = await spool.lease(maxRecords: batchSize)
        guard !records.isEmpty else { return true }
        var unreadable: [SpoolRecord] = []
        var readable: [(SpoolRecord, [AMQPOutboundMessage])] = []
        for record in records {
            do {
                readable.append((record, try SpooledMessages.decode(record.payload)))
            } catch {
                logger.error("unreadable spool record set aside", metadata: ["error": "\(error)"])
                unreadable.append(record)
            }
        }
        if !unreadable.isEmpty { await spool.setAside(unreadable) }
        let outcomes = await withTaskGroup(of: (SpoolRecord.ID, Bool).self) { group in
            for (record, messages) in readable {
                group.addTask {
                    do {
                        try await publisher.publish(messages)
                        return (record.id, true)
                    } catch {
                        return (record.id, false)
                    }
                }
            }
            var outcomes: [(SpoolRecord.ID, Bool)] = []
            for await outcome in group { outcomes.append(outcome) }
            return outcomes
        }
        let confirmed = outcomes.filter(\.1).map(\.0)
        let failed = outcomes.filter { !$0.1 }.map(\.0)
        if !confirmed.isEmpty {
            await spool.acknowledge(confirmed)
            Counter(label: "tcbridge_spool_forwarded_total").increment(by: confirmed.count)
        }
        if !failed.isEmpty {
            await spool.release(failed)
            logger.notice("spool forwarding failed; will retry", metadata: ["records": "\(failed.count)"])
        }
        if !confirmed.isEmpty, spool.depth.records == 0 {
            logger.info("spool drained")
        }
        return failed.isEmpty
    }
}
