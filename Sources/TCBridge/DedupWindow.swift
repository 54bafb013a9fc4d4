import DurationUnits
import HexCoding
import Logging
import Metrics
import Synchronization
import TutorCruncherSignature

#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

/// A SHA-256 digest as a compact hashable key: 32 bytes inline, no heap allocation per entry.
public struct BodyDigest: Sendable, Hashable {
    // The digest's bytes as four big-endian words.
    let words: (UInt64, UInt64, UInt64, UInt64)

    /// From exactly 32 bytes; `nil` otherwise.
    public init?(bytes: some Collection<UInt8>) {
        guard bytes.count == 32 else { return nil }
        self.init(first32: bytes)
    }

    /// The digest a request's body is remembered by: `hash` is its SHA-256 (`sha256(_:)`, 32 bytes).
    init(sha256 hash: [UInt8]) {
        self.init(first32: hash)
    }

    /// From the first 32 bytes of `bytes` (zeros for any missing), without allocating.
    private init(first32 bytes: some Collection<UInt8>) {
        var iterator = bytes.makeIterator()
        func nextWord() -> UInt64 {
            var word: UInt64 = 0
            for _ in 0..<8 { word = word << 8 | UInt64(iterator.next() ?? 0) }
            return word
        }
        words = (nextWord(), nextWord(), nextWord(), nextWord())
    }

    /// From 64 hexadecimal digits (either case), as `sha256Hex` produces; `nil` otherwise.
    public init?(hex: String) {
        guard hex.utf8.count == 64, let bytes = Hex.decode(hex.utf8) else { return nil }
        self.init(first32: bytes)
    }

    /// The 32 bytes.
    public var bytes: [UInt8] {
        var out: [UInt8] = []
        out.reserveCapacity(32)
        for word in [words.0, words.1, words.2, words.3] {
            for shift in stride(from: 56, through: 0, by: -8) { out.append(UInt8(truncatingIfNeeded: word >> UInt64(shift))) }
        }
        return out
    }

    public static func == (lhs: BodyDigest, rhs: BodyDigest) -> Bool {
        // Word by word: the tuple `==` is generic, and unspecialised (a debug build) it looks up
        // the tuple's type metadata on every call.
        lhs.words.0 == rhs.words.0 && lhs.words.1 == rhs.words.1 && lhs.words.2 == rhs.words.2 && lhs.words.3 == rhs.words.3
    }

    public func hash(into hasher: inout Hasher) {
        hasher.combine(words.0)
        hasher.combine(words.1)
        hasher.combine(words.2)
        hasher.combine(words.3)
    }
}

/// Remembers the SHA-256 of every body answered 2xx for a time window, with bounded memory, so a
/// sender retry (or a replay) of identical bytes is answered 200 without publishing again.
///
/// A body being handled right now is "claimed": an identical request arriving meanwhile waits for
/// the first one's outcome instead of racing it (if the first fails, the second proceeds).
///
/// Persistence (``init(window:maxEntries:journalPath:logger:now:)``): accepted digests are appended
/// to a journal file; ``complete(_:accepted:)`` returns once the entry is written (a crash or kill
/// of the bridge keeps it) and the journal `fsync`s within about 20 ms (a crash of the machine keeps
/// it from then on), so a restart remembers them. Times are wall-clock
/// milliseconds since the epoch, so they mean the same after a restart. The journal's file I/O runs
/// on its own serial queue, never on Swift's cooperative pool.
///
/// Thread-safe.
public final class DedupWindow: Sendable {
    public enum Claim: Sendable {
        /// Not seen within the window: handle it, then call ``DedupWindow/complete(_:accepted:)``.
        case new
        /// Answered 2xx within the window: answer 200, publish nothing.
        case duplicate
    }

    /// Wall-clock milliseconds since the epoch.
    public typealias Clock = @Sendable () -> Int64

    /// `CLOCK_REALTIME` in milliseconds.
    public static let wallClock: Clock = {
        var now = timespec()
        clock_gettime(CLOCK_REALTIME, &now)
        return Int64(now.tv_sec) * 1000 + Int64(now.tv_nsec) / 1_000_000
    }

    public let window: Duration
    /// Most bodies remembered (clamped to 1...2^30).
    public let maxEntries: Int
    private let memory: DedupMemory
    /// Internal for tests.
    let journal: DedupJournal?
    private let logger: Logger?

    /// A window kept in memory only (forgotten on restart).
    public init(window: Duration, maxEntries: Int = 100_000, now: @escaping Clock = DedupWindow.wallClock) {
        let maxEntries = DedupWindow.clamped(maxEntries)
        self.window = window
        self.maxEntries = maxEntries
        self.memory = DedupMemory(window: window, maxEntries: maxEntries, now: now, logger: Logger(label: "tc-bridge.dedup"))
        self.journal = nil
        self.logger = nil
    }

    /// A window that survives restarts: opens (creating if needed) the journal at `journalPath` and
    /// loads the entries still inside the window. A torn last record is ignored (and cut off), a
    /// damaged one skipped; a file that is not a dedup journal is renamed aside with an error logged.
    /// Blocking file I/O: call at start-up.
    /// - Throws: ``DedupJournalError`` when the file cannot be created, read or written.
    public convenience init(
        window: Duration, maxEntries: Int = 100_000, journalPath: String, logger: Logger, now: @escaping Clock = DedupWindow.wallClock
    ) throws(DedupJournalError) {
        try self.init(window: window, maxEntries: maxEntries, journalPath: journalPath, compactionMinimum: 1024, logger: logger, now: now)
    }

    /// `compactionMinimum`: the journal is never compacted while it holds fewer records (tests lower it).
    init(
        window: Duration, maxEntries: Int, journalPath: String, compactionMinimum: Int, logger: Logger,
        now: @escaping Clock = DedupWindow.wallClock
    ) throws(DedupJournalError) {
        let maxEntries = DedupWindow.clamped(maxEntries)
        self.window = window
        self.maxEntries = maxEntries
        let memory = DedupMemory(window: window, maxEntries: maxEntries, now: now, logger: logger)
        self.memory = memory
        self.logger = logger
        let (journal, loaded) = try DedupJournal.open(
            path: journalPath, cutoff: now() - memory.windowMillis, maxEntries: maxEntries, compactionMinimum: compactionMinimum,
            logger: logger, live: { memory.liveEntries() }, liveCount: { memory.liveCount() })
        memory.load(loaded)
        self.journal = journal
        if !loaded.isEmpty {
            logger.info("dedup window restored", metadata: ["entries": "\(loaded.count)", "journal": "\(journalPath)"])
        }
    }

    /// `maxEntries` within 1...2^30.
    private static func clamped(_ maxEntries: Int) -> Int {
        min(max(maxEntries, DedupTable.limitRange.lowerBound), DedupTable.limitRange.upperBound)
    }

    /// ``claim(_:)-(BodyDigest)`` for a digest in hex, as `sha256Hex` gives it. `digest` must be 64
    /// hex digits (a programming error otherwise: it traps).
    public func claim(_ digest: String) async -> Claim {
        await claim(Self.key(digest))
    }

    /// ``complete(_:accepted:)-(BodyDigest,_)`` for a digest in hex; see ``claim(_:)-(String)``.
    public func complete(_ digest: String, accepted: Bool) async {
        await complete(Self.key(digest), accepted: accepted)
    }

    private static func key(_ hex: String) -> BodyDigest {
        guard let digest = BodyDigest(hex: hex) else { preconditionFailure("not a hex SHA-256 digest") }
        return digest
    }

    /// Requests waiting on an in-progress claim of `digest` (for tests and diagnostics).
    func waitingCount(_ digest: BodyDigest) -> Int { memory.waitingCount(digest) }

    /// Entries currently remembered.
    public var count: Int { memory.count }

    /// Records in the journal file, live or not (`nil` without a journal). For tests and diagnostics.
    public var journalRecords: Int? { journal?.recordCount }

    /// `fsync` calls made for journal appends so far (concurrent completions share one).
    public var journalSyncs: Int? { journal?.syncCount }

    /// Claims `digest`: `.duplicate` if a body with it was accepted within the window, else `.new`
    /// (waiting first while an identical body is being handled).
    public func claim(_ digest: BodyDigest) async -> Claim {
        await memory.claim(digest)
    }

    /// Ends a ``Claim/new`` claim. `accepted`: the body was answered 2xx and is remembered; with a
    /// journal this returns once the entry is written (or its write failed: that is logged and
    /// counted, and the entry is still remembered in memory). Waiters resume after that.
    public func complete(_ digest: BodyDigest, accepted: Bool) async {
        if accepted {
            let at = memory.remember(digest)
            if let journal, case .failure(let error) = journal.append(DedupEntry(digest: digest, at: at)) {
                Counter(label: "tcbridge_dedup_journal_errors_total").increment()
                logger?.error("dedup journal write failed; this body is remembered in memory only", metadata: ["error": "\(error)"])
            }
        }
        memory.release(digest)
    }
}

/// One remembered body: its digest and when it was accepted (wall-clock ms).
struct DedupEntry: Sendable, Equatable {
    var digest: BodyDigest
    var at: Int64
}

/// The in-memory side of ``DedupWindow``; shared with its journal for compaction snapshots.
final class DedupMemory: Sendable {
    private struct State {
        var accepted: DedupTable
        var inProgress: [BodyDigest: [CheckedContinuation<Void, Never>]] = [:]
        var warnedFull = false
    }

    let windowMillis: Int64
    let maxEntries: Int
    private let now: DedupWindow.Clock
    private let logger: Logger
    private let state: Mutex<State>

    init(window: Duration, maxEntries: Int, now: @escaping DedupWindow.Clock, logger: Logger) {
        // Within 0...Int64.max / 2, so `now - windowMillis` cannot overflow (a window of zero or
        // less forgets every body at once).
        self.windowMillis = min(max(window.clampedMilliseconds, 0), Int64.max / 2)
        self.maxEntries = maxEntries
        self.now = now
        self.logger = logger
        self.state = Mutex(State(accepted: DedupTable(maxEntries: maxEntries)))
    }

    var count: Int { state.withLock { $0.accepted.count } }

    func waitingCount(_ digest: BodyDigest) -> Int { state.withLock { $0.inProgress[digest]?.count ?? 0 } }

    /// Entries loaded from the journal, oldest first.
    func load(_ entries: [DedupEntry]) {
        state.withLock { state in
            for entry in entries { insert(entry, into: &state) }
        }
    }

    func claim(_ digest: BodyDigest) async -> DedupWindow.Claim {
        while true {
            enum Step { case proceed(DedupWindow.Claim), wait }
            let step: Step = state.withLock { state in
                expire(&state)
                // In progress first: an accepted entry is in memory before it is durable, and an
                // identical request must not be answered until it is.
                if state.inProgress[digest] != nil { return .wait }
                if state.accepted.contains(digest) { return .proceed(.duplicate) }
                state.inProgress[digest] = []
                return .proceed(.new)
            }
            switch step {
            case .proceed(let claim): return claim
            case .wait:
                await withCheckedContinuation { continuation in
                    let registered = state.withLock { state in
                        guard state.inProgress[digest] != nil else { return false }
                        state.inProgress[digest, default: []].append(continuation)
                        return true
                    }
                    if !registered { continuation.resume() }
                }
            }
        }
    }

    /// Remembers `digest` as accepted now; returns the time recorded.
    func remember(_ digest: BodyDigest) -> Int64 {
        let at = now()
        state.withLock { insert(DedupEntry(digest: digest, at: at), into: &$0) }
        return at
    }

    /// Ends the claim on `digest` and lets identical requests waiting on it proceed.
    func release(_ digest: BodyDigest) {
        let waiters = state.withLock { $0.inProgress.removeValue(forKey: digest) ?? [] }
        for waiter in waiters { waiter.resume() }
    }

    /// Entries inside the window, oldest first (a snapshot for compaction).
    func liveEntries() -> [DedupEntry] {
        state.withLock { state in
            expire(&state)
            return state.accepted.liveEntries()
        }
    }

    /// Entries inside the window.
    func liveCount() -> Int {
        state.withLock { state in
            expire(&state)
            return state.accepted.count
        }
    }

    private func insert(_ entry: DedupEntry, into state: inout State) {
        let evicted = state.accepted.insert(entry)
        if evicted > 0 {
            Counter(label: "tcbridge_dedup_evicted_total").increment(by: evicted)
            if !state.warnedFull {
                state.warnedFull = true
                logger.warning(
                    "dedup window full: forgetting bodies before their window ends; raise the limit or a replayed body may be published again",
                    metadata: ["max_entries": "\(maxEntries)"])
            }
        }
    }

    private func expire(_ state: inout State) {
        state.accepted.expire(through: now() - windowMillis)
    }
}
