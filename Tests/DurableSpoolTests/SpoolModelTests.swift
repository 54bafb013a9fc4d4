@testable import DurableSpool
import Foundation
import TestSupport
import Testing

/// Model-based test of the spool: random histories of append groups (random sizes, across segment
/// boundaries, records larger than a segment, a full spool), leases, acknowledgements, releases,
/// clean restarts, `kill -9`, power cuts (torn tails, lost unsynced bytes and names) and injected
/// write, truncate, `fsync` and directory-sync failures, checked against a simple model:
///
/// - every append answered with success is leased again after any crash until the consumer
///   acknowledges it (at least once), and is never set aside as damage;
/// - what is leased is byte for byte something that was appended (never a misaligned span);
/// - within one run of the spool a record is not handed out twice unless it was released.
///
/// `TCBRIDGE_SPOOL_MODEL_SEED` sets the first seed (default fixed), `TCBRIDGE_SPOOL_MODEL_SEQUENCES`
/// the number of sequences; a failure names the seed of its sequence, replayed with
/// `TCBRIDGE_SPOOL_MODEL_SEED=<seed> TCBRIDGE_SPOOL_MODEL_SEQUENCES=1`.
@Suite struct SpoolModelTests {
    @Test func randomHistoriesNeverLoseAnAcknowledgedAppend() async throws {
        let environment = ProcessInfo.processInfo.environment
        let base = environment["TCBRIDGE_SPOOL_MODEL_SEED"].flatMap { UInt64($0) } ?? 20_261_130
        let count = environment["TCBRIDGE_SPOOL_MODEL_SEQUENCES"].flatMap { Int($0) } ?? 2000
        print("spool model: \(count) sequences from seed \(base) (TCBRIDGE_SPOOL_MODEL_SEED, TCBRIDGE_SPOOL_MODEL_SEQUENCES)")
        // Off the cooperative pool, calling the spool synchronously: thousands of short hops would
        // otherwise crowd the pool that every other test shares.
        let (totals, ran, elapsed, failure) = try await runCPUHeavy { () -> (ModelRun.Stats, Int, Duration, String?) in
            let clock = ContinuousClock()
            let start = clock.now
            var totals = ModelRun.Stats()
            var ran = 0
            for index in 0..<count {
                ran += 1
                let seed = base &+ UInt64(index)
                let run = ModelRun(seed: seed)
                let problems = run.run()
                totals.add(run.stats)
                if !problems.isEmpty {
                    let failure =
                        "seed \(seed) (replay: TCBRIDGE_SPOOL_MODEL_SEED=\(seed) TCBRIDGE_SPOOL_MODEL_SEQUENCES=1): "
                        + problems.prefix(5).joined(separator: "; ")
                    return (totals, ran, clock.now - start, failure)
                }
            }
            return (totals, ran, clock.now - start, nil)
        }
        if let failure { Issue.record(Comment(rawValue: failure)) }
        print("spool model: \(ran) sequences in \(elapsed): \(totals)")
        #expect(totals.acknowledged > 0 && totals.refused > 0 && totals.crashes > 0 && totals.delivered > 0)
    }
}

final class ModelRun {
    struct Stats: CustomStringConvertible, Sendable {
        var steps = 0
        var acknowledged = 0
        var refused = 0
        var delivered = 0
        var crashes = 0
        var restarts = 0
        var corruptSpans = 0

        mutating func add(_ other: Stats) {
            steps += other.steps
            acknowledged += other.acknowledged
            refused += other.refused
            delivered += other.delivered
            crashes += other.crashes
            restarts += other.restarts
            corruptSpans += other.corruptSpans
        }

        var description: String {
            "\(steps) steps, \(acknowledged) appends acknowledged, \(refused) refused, \(delivered) leases, "
                + "\(crashes) power cuts, \(restarts) other restarts, \(corruptSpans) damaged spans set aside"
        }
    }

    enum Restart: CaseIterable { case close, kill, crash }

    var rng: SplitMix64
    let fileSystem: SimulatedFileSystem
    let segmentBytes: Int64
    let maxBytes: Int64
    let faulty: Bool
    var spool: DurableSpool
    var stats = Stats()
    var problems: [String] = []

    /// Every payload ever appended (answered success or not), by tag.
    var payloads: [Int: [UInt8]] = [:]
    /// Answered success at append.
    var acknowledgedAppends: Set<Int> = []
    /// Answered success and not yet acknowledged by the consumer: owed.
    var owed: Set<Int> = []
    /// This run of the spool: leased now, and acknowledged by the consumer.
    var leasedNow: [SpoolRecord.ID: Int] = [:]
    var consumed: Set<Int> = []
    var nextTag = 0

    init(seed: UInt64) {
        var rng = SplitMix64(seed: seed)
        fileSystem = SimulatedFileSystem(seed: rng.next())
        segmentBytes = Int64(128 << Int.random(in: 0...4, using: &rng))
        maxBytes = Bool.random(using: &rng) ? 1 << 20 : Int64.random(in: 1024...8192, using: &rng)
        faulty = Int.random(in: 0..<4, using: &rng) != 0
        self.rng = rng
        spool = simulatedSpool(fileSystem, maxBytes: maxBytes, segmentBytes: segmentBytes)
    }

    func run() -> [String] {
        setFaults(faulty)
        if let reason = spool.unavailableReason { problems.append("fresh spool unavailable: \(reason)") }
        let steps = Int.random(in: 10...60, using: &rng)
        for _ in 0..<steps where problems.isEmpty {
            stats.steps += 1
            switch Int.random(in: 0..<100, using: &rng) {
            case 0..<40: appendGroup()
            case 40..<65: lease()
            case 65..<80: acknowledge()
            case 80..<88: release()
            case 88..<92: restart(.close)
            case 92..<96: restart(.kill)
            default: restart(.crash)
            }
        }
        guard problems.isEmpty else { return problems }
        // The end: faults stop, the process stops one way or another, and everything owed comes out.
        setFaults(false)
        restart(Restart.allCases[Int.random(in: 0..<Restart.allCases.count, using: &rng)])
        drain()
        checkNothingAcknowledgedWasSetAside()
        stats.corruptSpans += spool.corruptSpans
        return problems
    }

    private func setFaults(_ on: Bool) {
        fileSystem.clearFailures()
        guard on else { return }
        fileSystem.setFailureRate(.write, 0.08)
        fileSystem.setFailureRate(.fileSync, 0.06)
        fileSystem.setFailureRate(.truncate, 0.3)
        fileSystem.setFailureRate(.directorySync, 0.05)
        fileSystem.setFailureRate(.create, 0.03)
    }

    private func makePayload() -> (tag: Int, bytes: [UInt8]) {
        let tag = nextTag
        nextTag += 1
        var bytes = Array("<T:\(tag)>".utf8)
        let size =
            switch Int.random(in: 0..<10, using: &rng) {
            case 0: Int.random(in: Int(segmentBytes)...Int(segmentBytes) * 3, using: &rng)  // larger than a segment
            case 1: 0
            default: Int.random(in: 0...200, using: &rng)
            }
        bytes.reserveCapacity(bytes.count + size + 8)
        while bytes.count < size {
            withUnsafeBytes(of: rng.next()) { word in
                for byte in word { bytes.append(byte == UInt8(ascii: "<") ? UInt8(ascii: "=") : byte) }
            }
        }
        payloads[tag] = bytes
        return (tag, bytes)
    }

    private func appendGroup() {
        let made = (0..<Int.random(in: 1...6, using: &rng)).map { _ in makePayload() }
        let results = spool.appendGroupSynchronously(made.map(\.bytes))
        for (appended, result) in zip(made, results) {
            switch result {
            case .success:
                acknowledgedAppends.insert(appended.tag)
                owed.insert(appended.tag)
                stats.acknowledged += 1
            case .failure:
                stats.refused += 1
            }
        }
    }

    private func check(_ record: SpoolRecord) {
        guard let tag = Self.tags(in: record.payload).first, payloads[tag] == record.payload else {
            problems.append("leased bytes that were never appended: \(record.payload.prefix(24))… (\(record.payload.count) bytes)")
            return
        }
        if leasedNow[record.id] != nil || leasedNow.values.contains(tag) { problems.append("record \(tag) leased twice at once") }
        if consumed.contains(tag) { problems.append("record \(tag) handed out again after its acknowledgement, without a restart") }
        leasedNow[record.id] = tag
        stats.delivered += 1
    }

    private func lease() {
        for record in spool.leaseSynchronously(maxRecords: Int.random(in: 1...8, using: &rng)) { check(record) }
    }

    private func pickLeased() -> [SpoolRecord.ID] {
        leasedNow.keys.sorted().filter { _ in Int.random(in: 0..<10, using: &rng) < 6 }
    }

    private func acknowledge() {
        let ids = pickLeased()
        spool.acknowledgeSynchronously(ids)
        for id in ids {
            guard let tag = leasedNow.removeValue(forKey: id) else { continue }
            owed.remove(tag)
            consumed.insert(tag)
        }
    }

    private func release() {
        let ids = pickLeased()
        spool.releaseSynchronously(ids)
        for id in ids { leasedNow.removeValue(forKey: id) }
    }

    private func restart(_ kind: Restart) {
        switch kind {
        case .close:
            spool.closeSynchronously()
            stats.restarts += 1
        case .kill:
            fileSystem.kill()
            stats.restarts += 1
        case .crash:
            fileSystem.crash()
            stats.crashes += 1
        }
        stats.corruptSpans += spool.corruptSpans
        spool = simulatedSpool(fileSystem, maxBytes: maxBytes, segmentBytes: segmentBytes)
        if let reason = spool.unavailableReason { problems.append("spool unavailable after a \(kind) restart: \(reason)") }
        leasedNow = [:]
        consumed = []
    }

    private func drain() {
        while problems.isEmpty {
            let records = spool.leaseSynchronously(maxRecords: 64)
            if records.isEmpty { break }
            for record in records { check(record) }
            acknowledge(records.map(\.id))
        }
        if !owed.isEmpty { problems.append("appends answered with success never delivered: \(owed.sorted().prefix(10))") }
        if spool.depth != SpoolDepth(records: 0, bytes: 0) { problems.append("drained spool still holds \(spool.depth)") }
    }

    private func acknowledge(_ ids: [SpoolRecord.ID]) {
        spool.acknowledgeSynchronously(ids)
        for id in ids {
            guard let tag = leasedNow.removeValue(forKey: id) else { continue }
            owed.remove(tag)
            consumed.insert(tag)
        }
    }

    private func checkNothingAcknowledgedWasSetAside() {
        for path in fileSystem.files(in: "/spool/corrupt") {
            let kept = Self.tags(in: fileSystem.contents(path) ?? []).filter(acknowledgedAppends.contains)
            if !kept.isEmpty { problems.append("appends answered with success set aside as damage in \(path): \(kept)") }
        }
    }

    /// Every complete `<T:n>` tag in `bytes`.
    static func tags(in bytes: [UInt8]) -> [Int] {
        var tags: [Int] = []
        var index = 0
        while index + 4 < bytes.count {
            guard bytes[index] == UInt8(ascii: "<"), bytes[index + 1] == UInt8(ascii: "T"), bytes[index + 2] == UInt8(ascii: ":") else {
                index += 1
                continue
            }
            var end = index + 3
            var value = 0
            while end < bytes.count, end - index < 15, let digit = Int(exactly: bytes[end]).flatMap({ $0 >= 48 && $0 <= 57 ? $0 - 48 : nil }) {
                value = value * 10 + digit
                end += 1
            }
            if end > index + 3, end < bytes.count, bytes[end] == UInt8(ascii: ">") { tags.append(value) }
            index = end
        }
        return tags
    }
}
