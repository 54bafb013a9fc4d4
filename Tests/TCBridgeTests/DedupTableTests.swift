import DequeModule
import Foundation
import Logging
@testable import TCBridge
import TestSupport
import Testing

// The dedup window's compact table, checked against a model built from a dictionary and a deque (how
// the window kept its entries before the table), over random inserts, re-inserts and expiries, with
// the real seeded hash and with hashes that force equal slots and tags.

@Suite struct DedupTableTests {
    /// What the table must behave like: every entry in a deque, the newest entry of each digest in
    /// a dictionary; an entry older than the dictionary's is stale. As before the table: remembering
    /// a new digest while `maxEntries` are remembered evicts the oldest remembered ones (stale
    /// entries passed on the way are dropped without counting); re-inserting a remembered digest
    /// evicts nothing. New with the table: the deque is kept under `2 * maxEntries`.
    struct Model {
        let maxEntries: Int
        var order: Deque<(entry: DedupEntry, sequence: Int)> = []
        var newest: [BodyDigest: (at: Int64, sequence: Int)] = [:]
        var nextSequence = 0

        mutating func insert(_ entry: DedupEntry) -> Int {
            var evicted = 0
            while order.count >= 2 * maxEntries {
                if popOldest() { evicted += 1 }
            }
            if newest[entry.digest] == nil {
                while newest.count >= maxEntries {
                    if popOldest() { evicted += 1 }
                }
            }
            order.append((entry, nextSequence))
            newest[entry.digest] = (entry.at, nextSequence)
            nextSequence += 1
            return evicted
        }

        mutating func expire(through cutoff: Int64) {
            while let oldest = order.first, oldest.entry.at <= cutoff { popOldest() }
        }

        @discardableResult
        mutating func popOldest() -> Bool {
            guard let oldest = order.popFirst() else { return false }
            guard newest[oldest.entry.digest]?.sequence == oldest.sequence else { return false }
            newest[oldest.entry.digest] = nil
            return true
        }

        var live: [DedupEntry] { order.filter { newest[$0.entry.digest]?.sequence == $0.sequence }.map(\.entry) }
    }

    static func digest(_ generator: inout SplitMix64) -> BodyDigest {
        var bytes: [UInt8] = []
        for _ in 0..<4 {
            let word = generator.next()
            for shift in stride(from: 0, to: 64, by: 8) { bytes.append(UInt8(truncatingIfNeeded: word >> UInt64(shift))) }
        }
        guard let digest = BodyDigest(bytes: bytes) else { preconditionFailure("32 bytes") }
        return digest
    }

    /// The hash the table uses.
    enum Hash: Sendable, CustomStringConvertible {
        /// Swift's per-process seeded hash, as in production.
        case seeded
        /// One value for every digest: one home slot, one tag, so every probe passes tag matches
        /// of other digests, and every deletion shifts a single long run.
        case constant
        /// Eight values whose home is the last slot of the first 1,024: runs wrap past the end.
        case lastSlot

        var function: @Sendable (BodyDigest) -> UInt {
            switch self {
            case .seeded: { UInt(bitPattern: $0.hashValue) }
            case .constant: { _ in 0x9E37_79B9_0000_0000 }
            case .lastSlot: { UInt(0xFFFF_FFF8 | ($0.words.0 & 7)) << 32 }
            }
        }

        var description: String {
            switch self {
            case .seeded: "seeded"
            case .constant: "constant"
            case .lastSlot: "lastSlot"
            }
        }
    }

    /// (seed, most entries, distinct digests drawn from, first sequence number, hash). Small pools
    /// make re-inserts (stale entries) common; a pool above 512 with room for it makes the index
    /// grow past its first 1,024 slots; first sequences near 2^32 make the sequence numbers wrap.
    static let cases: [(UInt64, Int, Int, UInt32, Hash)] = [
        (1, 1, 8, 0, .seeded), (2, 7, 20, 0, .seeded), (3, 100, 150, 0, .seeded), (4, 100, 5_000, .max - 50, .seeded),
        (5, 2_000, 3_000, 0, .seeded), (6, 5_000, 4_000, .max - 1_000, .seeded), (7, 300, 300, 0, .seeded),
        (8, 3_000, 20_000, .max, .seeded), (9, 40, 60, .max - 10, .constant), (10, 200, 400, 0, .lastSlot),
        (11, 700, 900, .max - 300, .lastSlot),
    ]

    /// Thousands of steps, each checked against the model (seconds of CPU in a debug build, so off
    /// the cooperative pool); reports the first step where the two differ.
    @Test(arguments: cases)
    func behavesLikeTheModelUnderRandomInsertsReinsertsAndExpiries(_ testCase: (UInt64, Int, Int, UInt32, Hash)) async throws {
        let divergence = try await runCPUHeavy { Self.firstDivergenceFromTheModel(testCase) }
        #expect(divergence == nil)
    }

    static func firstDivergenceFromTheModel(_ testCase: (UInt64, Int, Int, UInt32, Hash)) -> String? {
        let (seed, maxEntries, poolSize, firstSequence, hash) = testCase
        var generator = SplitMix64(seed: seed)
        let pool = (0..<poolSize).map { _ in Self.digest(&generator) }
        var table = DedupTable(maxEntries: maxEntries, firstSequence: firstSequence, hash: hash.function)
        var model = Model(maxEntries: maxEntries)
        var clock: Int64 = 1_000

        let steps = hash == .constant ? 2_000 : 8_000
        for step in 0..<steps {
            func at() -> String { "seed \(seed), step \(step)" }  // made only for a divergence
            clock += Int64.random(in: 0...3, using: &generator)
            if Int.random(in: 0..<50, using: &generator) == 0 {
                let cutoff = clock - Int64.random(in: 0...2_000, using: &generator)
                table.expire(through: cutoff)
                model.expire(through: cutoff)
            } else {
                let entry = DedupEntry(digest: pool[Int.random(in: 0..<poolSize, using: &generator)], at: clock)
                let (evicted, expected) = (table.insert(entry), model.insert(entry))
                if evicted != expected { return "\(at()): evicted \(evicted), the model \(expected)" }
            }
            if table.count != model.newest.count { return "\(at()): count \(table.count), the model \(model.newest.count)" }
            for _ in 0..<8 {
                let digest = pool[Int.random(in: 0..<poolSize, using: &generator)]
                let (found, expected) = (table.acceptedAt(digest), model.newest[digest]?.at)
                if found != expected { return "\(at()): lookup \(String(describing: found)), the model \(String(describing: expected))" }
            }
            if step % 1_000 == 999 {
                if table.liveEntries() != model.live { return "\(at()): the live entries differ" }
                for digest in pool where table.contains(digest) != (model.newest[digest] != nil) {
                    return "\(at()): contains \(digest) is \(table.contains(digest))"
                }
            }
        }
        return nil
    }

    @Test func aLimitBelowOneKeepsOneEntry() {
        var generator = SplitMix64(seed: 9)
        var table = DedupTable(maxEntries: 0)
        let first = Self.digest(&generator)
        let second = Self.digest(&generator)
        #expect(table.insert(DedupEntry(digest: first, at: 1)) == 0)
        #expect(table.insert(DedupEntry(digest: second, at: 2)) == 1)
        #expect(table.count == 1)
        #expect(!table.contains(first))
        #expect(table.acceptedAt(second) == 2)
    }

    @Test func anEmptyTableFindsNothingAndExpiresNothing() {
        var generator = SplitMix64(seed: 10)
        var table = DedupTable(maxEntries: 10)
        #expect(!table.contains(Self.digest(&generator)))
        table.expire(through: .max)
        #expect(table.count == 0)
        #expect(table.liveEntries().isEmpty)
    }

    @Test func reinsertingARememberedDigestEvictsNothingEvenWhenFull() {
        var generator = SplitMix64(seed: 12)
        var table = DedupTable(maxEntries: 3)
        let digests = (0..<3).map { _ in Self.digest(&generator) }
        for (index, digest) in digests.enumerated() { table.insert(DedupEntry(digest: digest, at: Int64(index))) }
        #expect(table.insert(DedupEntry(digest: digests[0], at: 10)) == 0)
        #expect(table.insert(DedupEntry(digest: digests[1], at: 11)) == 0)
        #expect(digests.allSatisfy { table.contains($0) })
        // A new digest evicts the oldest remembered one (digests[2]), passing the stale entries.
        let fourth = Self.digest(&generator)
        #expect(table.insert(DedupEntry(digest: fourth, at: 12)) == 1)
        #expect(!table.contains(digests[2]))
        #expect(table.acceptedAt(digests[0]) == 10)
        #expect(table.count == 3)
    }

    @Test func aWindowClampsItsLimitAndLoadsAJournalWithANegativeOne() async throws {
        let directory = NSTemporaryDirectory() + "dedup-table-\(UUID().uuidString)"
        try FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(atPath: directory) }
        var logger = Logger(label: "dedup-table-tests")
        logger.logLevel = .critical
        // A clock of its own: each body accepted a second after the last, so "c" is the newest.
        let clock = DedupWindowTests.FakeClock()
        let first = try DedupWindow(window: .seconds(3600), maxEntries: 10, journalPath: directory + "/dedup.log", logger: logger, now: clock.read)
        for name in ["a", "b", "c"] {
            clock.advance(.seconds(1))
            let digest = DedupWindowTests.digest(name)
            #expect(await first.claim(digest) == .new)
            await first.complete(digest, accepted: true)
        }
        let second = try DedupWindow(
            window: .seconds(3600), maxEntries: -5, journalPath: directory + "/dedup.log", logger: logger, now: clock.read)
        #expect(second.maxEntries == 1)
        #expect(second.count == 1)
        #expect(await second.claim(DedupWindowTests.digest("c")) == .duplicate)
        #expect(DedupWindow(window: .seconds(1), maxEntries: .max).maxEntries == 1 << 30)
    }

    @Test func aWindowOfZeroOrLessRemembersNothingAndNeverTraps() async {
        for window in [Duration.zero, .zero - .seconds(5), .zero - .seconds(Int64.max), Duration(attoseconds: .min)] {
            let dedup = DedupWindow(window: window)
            let digest = DedupWindowTests.digest("a")
            #expect(await dedup.claim(digest) == .new)
            await dedup.complete(digest, accepted: true)
            #expect(await dedup.claim(digest) == .new, "window \(window)")
            await dedup.complete(digest, accepted: false)
        }
    }

    @Test func aReinsertedDigestIsRememberedWithItsNewTimeAndCountedOnce() {
        var generator = SplitMix64(seed: 11)
        var table = DedupTable(maxEntries: 10)
        let digest = Self.digest(&generator)
        table.insert(DedupEntry(digest: digest, at: 5))
        table.insert(DedupEntry(digest: digest, at: 9))
        #expect(table.count == 1)
        #expect(table.acceptedAt(digest) == 9)
        // Expiring the first insert's time leaves the second.
        table.expire(through: 5)
        #expect(table.acceptedAt(digest) == 9)
        #expect(table.liveEntries() == [DedupEntry(digest: digest, at: 9)])
        table.expire(through: 9)
        #expect(!table.contains(digest))
        #expect(table.count == 0)
    }
}
