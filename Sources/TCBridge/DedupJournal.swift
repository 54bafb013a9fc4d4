import Dispatch
import DurableSpool
import Logging
import Metrics
import Synchronization

#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

/// Why the dedup journal cannot be opened or written.
public enum DedupJournalError: Error, Sendable, Equatable, CustomStringConvertible {
    case io(path: String, operation: String, reason: String)

    public var description: String {
        switch self {
        case .io(let path, let operation, let reason): "dedup journal \(path): \(operation) failed: \(reason)"
        }
    }
}

/// The on-disk side of a persistent ``DedupWindow``: an append-only file of fixed-size records.
///
/// Format (all integers little-endian):
/// - header, 8 bytes: `TCDEDUP` and the format version `0x01`;
/// - records, 44 bytes each: the body's SHA-256 (32 bytes), the acceptance time in wall-clock
///   milliseconds since the epoch (Int64), and a CRC-32 of those 40 bytes (UInt32).
///
/// Appends are written at once (`pwrite`, under a lock) and made durable in the background: one
/// `fsync` at most every ``syncDelay`` covers every record written since the last one. So an
/// answered request's record survives a crash of the bridge at once (it is in the kernel's page
/// cache) and a crash of the machine once the next sync has run, within about 20 ms; what a power
/// loss takes in between are dedup entries only, and the worst it can cause is one duplicate
/// publish of a body the sender retries (delivery is at least once anyway). Waiting for an
/// `fsync` before every answer cost more than everything else the bridge does for a request.
///
/// When the file holds more than twice the live entries (and at least `compactionMinimum`
/// records) it is rewritten with the live ones only: temporary file, `fsync`, `rename`, `fsync` of
/// the directory, so a crash leaves either the old or the new file.
///
/// Threading: ``append(_:)`` may be called from any thread and never waits for the disk beyond
/// the `pwrite`; syncs and compaction run on one serial dispatch queue.
final class DedupJournal: Sendable {
    static let header: [UInt8] = Array("TCDEDUP".utf8) + [1]
    static let recordSize = 44
    /// How long written records may wait for their `fsync` (they share it).
    static let syncDelay: DispatchTimeInterval = .milliseconds(20)

    /// The serial queue of syncs and compaction (internal for tests).
    let queue = DispatchQueue(label: "tc-bridge.dedup-journal")
    /// The file. Appends write under this lock; only the queue replaces the descriptor (compaction),
    /// and only the queue syncs, so a sync may run outside the lock.
    private let file: Mutex<JournalFile>
    /// A sync is scheduled on the queue and has not started yet.
    private let syncScheduled = Atomic<Bool>(false)
    private let live: @Sendable () -> [DedupEntry]
    private let liveCount: @Sendable () -> Int
    private let logger: Logger

    private init(
        file: sending JournalFile, logger: Logger, live: @escaping @Sendable () -> [DedupEntry], liveCount: @escaping @Sendable () -> Int
    ) {
        self.file = Mutex(file)
        self.logger = logger
        self.live = live
        self.liveCount = liveCount
    }

    /// Opens or creates the journal and returns it with the entries newer than `cutoff` (oldest
    /// first, one per digest, at most `maxEntries`, the newest kept). Compacts at once when the file
    /// holds mostly dead records. Blocking.
    static func open(
        path: String, cutoff: Int64, maxEntries: Int, compactionMinimum: Int, logger: Logger,
        live: @escaping @Sendable () -> [DedupEntry], liveCount: @escaping @Sendable () -> Int
    ) throws(DedupJournalError) -> (DedupJournal, [DedupEntry]) {
        let file = JournalFile(path: path, compactionMinimum: compactionMinimum, logger: logger)
        var loaded = try file.load(cutoff: cutoff)
        if loaded.count > maxEntries { loaded.removeFirst(loaded.count - maxEntries) }
        if file.shouldCompact(live: loaded.count) { file.compact(loaded) }
        let journal = DedupJournal(file: file, logger: logger, live: live, liveCount: liveCount)
        return (journal, loaded)
    }

    /// Records in the file (live or not).
    var recordCount: Int { file.withLock { $0.records } }
    /// `fsync`s made for appends.
    var syncCount: Int { file.withLock { $0.syncs } }
    /// Records written and not yet covered by an `fsync`.
    var unsyncedCount: Int { file.withLock { $0.unsynced } }

    /// Returns once everything written so far is synced and any compaction has run. For tests and
    /// shutdown.
    func idle() async {
        await withCheckedContinuation { (continuation: CheckedContinuation<Void, Never>) in
            queue.async {
                self.sync()
                continuation.resume()
            }
        }
    }

    /// Writes `entry` (a crash of this process no longer loses it) and schedules the shared `fsync`.
    /// On a failed write the file is cut back to its last good length, so later appends stay aligned.
    func append(_ entry: DedupEntry) -> Result<Void, DedupJournalError> {
        let result = file.withLock { $0.write([entry]) }
        if case .success = result, !syncScheduled.exchange(true, ordering: .acquiringAndReleasing) {
            queue.asyncAfter(deadline: .now() + Self.syncDelay) {
                self.syncScheduled.store(false, ordering: .releasing)
                self.sync()
            }
        }
        return result
    }

    /// On the queue: one `fsync` for everything written since the last; then maybe compaction.
    private func sync() {
        let (descriptor, pending) = file.withLock { file in
            defer { file.unsynced = 0 }
            return (file.descriptor, file.unsynced)
        }
        guard pending > 0, descriptor >= 0 else { return }
        if fsync(descriptor) != 0 {
            let reason = String(cString: strerror(errno))
            // Counted as unsynced again, so the next sync tries again (and the error is logged again).
            file.withLock { $0.unsynced += pending }
            Counter(label: "tcbridge_dedup_journal_errors_total").increment()
            logger.error(
                "dedup journal fsync failed; recent entries may not survive a machine crash",
                metadata: ["error": "\(reason)", "entries": "\(pending)"])
            return
        }
        file.withLock { $0.syncs += 1 }
        if file.withLock({ $0.shouldCompact(live: liveCount()) }) { compact() }
    }

    /// Rewrites the file with the live entries only, holding the lock (which appends on the request
    /// path take) only for the quick steps: the snapshot, and copying what was appended meanwhile
    /// before the rename. The bulk write and its `fsync` happen outside it.
    private func compact() {
        // Every entry already in the file was put in memory before it was written, so a snapshot
        // taken with the file's length holds everything up to that length.
        let (entries, mark, path) = file.withLock { file in (live(), file.length, file.path) }
        guard let fresh = JournalFile.writeCompacted(entries, path: path, logger: logger) else { return }
        file.withLock { $0.switchTo(fresh, liveCount: entries.count, copyingFrom: mark) }
        JournalFile.syncDirectory(of: path)
    }
}

/// The journal file; used under the journal's lock (or before the journal exists).
private final class JournalFile {
    let path: String
    let directory: String
    let compactionMinimum: Int
    let logger: Logger
    var descriptor: Int32 = -1
    /// Bytes known to be good (written completely).
    var length: Int64 = 0
    var records = 0
    var syncs = 0
    /// Records written since the last `fsync`.
    var unsynced = 0

    init(path: String, compactionMinimum: Int, logger: Logger) {
        self.path = path
        if let slash = path.lastIndex(of: "/") {
            let parent = String(path[..<slash])
            directory = parent.isEmpty ? "/" : parent
        } else {
            directory = "."
        }
        self.compactionMinimum = compactionMinimum
        self.logger = logger
    }

    deinit {
        if descriptor >= 0 { close(descriptor) }
    }

    private func failure(_ operation: String) -> DedupJournalError {
        .io(path: path, operation: operation, reason: String(cString: strerror(errno)))
    }

    // MARK: Loading

    func load(cutoff: Int64) throws(DedupJournalError) -> [DedupEntry] {
        descriptor = open(path, O_RDWR | O_CREAT | O_CLOEXEC, 0o600)
        guard descriptor >= 0 else { throw failure("open") }
        let bytes = try readAll()
        if bytes.count < DedupJournal.header.count, bytes.elementsEqual(DedupJournal.header.prefix(bytes.count)) {
            // New, or torn while its header was being written.
            try writeHeader()
            return []
        }
        if !bytes.prefix(DedupJournal.header.count).elementsEqual(DedupJournal.header) {
            try setAside()
            try writeHeader()
            return []
        }
        var newest: [BodyDigest: Int64] = [:]
        var offset = DedupJournal.header.count
        var damaged = 0
        while offset + DedupJournal.recordSize <= bytes.count {
            defer { offset += DedupJournal.recordSize }
            guard let entry = Self.decode(bytes[offset..<offset + DedupJournal.recordSize]) else {
                damaged += 1
                continue
            }
            records += 1
            if entry.at > cutoff, entry.at > newest[entry.digest] ?? Int64.min { newest[entry.digest] = entry.at }
        }
        if damaged > 0 {
            logger.warning("dedup journal: damaged records skipped", metadata: ["journal": "\(path)", "records": "\(damaged)"])
            records += damaged  // they still take room until compaction
        }
        length = Int64(offset)
        if offset < bytes.count {
            // A torn last record from a crash mid-append: it was never acknowledged; cut it off.
            logger.notice("dedup journal: torn last record ignored", metadata: ["journal": "\(path)", "bytes": "\(bytes.count - offset)"])
            guard ftruncate(descriptor, off_t(offset)) == 0, fsync(descriptor) == 0 else { throw failure("truncate") }
        }
        return newest.map { DedupEntry(digest: $0.key, at: $0.value) }.sorted { $0.at < $1.at }
    }

    private func readAll() throws(DedupJournalError) -> [UInt8] {
        var bytes: [UInt8] = []
        var buffer = [UInt8](repeating: 0, count: 1 << 16)
        var position: off_t = 0
        while true {
            let count = buffer.withUnsafeMutableBytes { pread(descriptor, $0.baseAddress, $0.count, position) }
            if count < 0 {
                if errno == EINTR { continue }
                throw failure("read")
            }
            if count == 0 { return bytes }
            bytes.append(contentsOf: buffer[0..<count])
            position += off_t(count)
        }
    }

    private func writeHeader() throws(DedupJournalError) {
        guard ftruncate(descriptor, 0) == 0 else { throw failure("truncate") }
        guard Self.writeAll(descriptor, DedupJournal.header, at: 0), fsync(descriptor) == 0 else { throw failure("write") }
        syncDirectory()
        length = Int64(DedupJournal.header.count)
        records = 0
    }

    /// Renames a file that is not a journal out of the way, so nothing is lost silently.
    private func setAside() throws(DedupJournalError) {
        var now = timespec()
        clock_gettime(CLOCK_REALTIME, &now)
        let aside = "\(path).unreadable-\(now.tv_sec)"
        close(descriptor)
        descriptor = -1
        guard rename(path, aside) == 0 else { throw failure("rename aside") }
        logger.error(
            "dedup journal has an unknown format; renamed aside and starting empty (bodies accepted before may be published again)",
            metadata: ["journal": "\(path)", "moved_to": "\(aside)"])
        descriptor = open(path, O_RDWR | O_CREAT | O_CLOEXEC, 0o600)
        guard descriptor >= 0 else { throw failure("open") }
    }

    // MARK: Records

    static func encode(_ entry: DedupEntry, into out: inout [UInt8]) {
        let start = out.count
        out.append(contentsOf: entry.digest.bytes)
        let time = UInt64(bitPattern: entry.at)
        for shift in stride(from: 0, to: 64, by: 8) { out.append(UInt8(truncatingIfNeeded: time >> UInt64(shift))) }
        let crc = CRC32.checksum(Array(out[start..<out.count]))
        for shift in stride(from: 0, to: 32, by: 8) { out.append(UInt8(truncatingIfNeeded: crc >> UInt32(shift))) }
    }

    static func decode(_ record: ArraySlice<UInt8>) -> DedupEntry? {
        let base = record.startIndex
        let body = Array(record[base..<base + 40])
        var crc: UInt32 = 0
        for index in 0..<4 { crc |= UInt32(record[base + 40 + index]) << UInt32(8 * index) }
        guard CRC32.checksum(body) == crc, let digest = BodyDigest(bytes: body[0..<32]) else { return nil }
        var time: UInt64 = 0
        for index in 0..<8 { time |= UInt64(body[32 + index]) << UInt64(8 * index) }
        return DedupEntry(digest: digest, at: Int64(bitPattern: time))
    }

    // MARK: Appending

    /// Writes `entries` at the end of the file (no `fsync`: see ``DedupJournal``).
    func write(_ entries: [DedupEntry]) -> Result<Void, DedupJournalError> {
        guard descriptor >= 0 else { return .failure(.io(path: path, operation: "write", reason: "journal not open")) }
        var bytes: [UInt8] = []
        bytes.reserveCapacity(entries.count * DedupJournal.recordSize)
        for entry in entries { Self.encode(entry, into: &bytes) }
        guard Self.writeAll(descriptor, bytes, at: off_t(length)) else {
            let error = failure("write")
            _ = ftruncate(descriptor, off_t(length))
            return .failure(error)
        }
        length += Int64(bytes.count)
        records += entries.count
        unsynced += entries.count
        return .success(())
    }

    // MARK: Compaction

    func shouldCompact(live: Int) -> Bool {
        records >= compactionMinimum && records > 2 * live
    }

    /// Rewrites the file with `live` only, synchronously (at start-up). On failure the old file stays
    /// in use (logged).
    func compact(_ live: [DedupEntry]) {
        guard let fresh = Self.writeCompacted(live, path: path, logger: logger) else { return }
        switchTo(fresh, liveCount: live.count, copyingFrom: length)
        syncDirectory()
    }

    /// Writes `live` to `<path>.tmp` and `fsync`s it; the new file's descriptor and length, or `nil`
    /// (logged) when that failed. Touches no state: runs outside the journal's lock.
    static func writeCompacted(_ live: [DedupEntry], path: String, logger: Logger) -> (descriptor: Int32, length: Int64)? {
        let temporary = path + ".tmp"
        var bytes = DedupJournal.header
        bytes.reserveCapacity(bytes.count + live.count * DedupJournal.recordSize)
        for entry in live { encode(entry, into: &bytes) }
        let fresh = open(temporary, O_RDWR | O_CREAT | O_TRUNC | O_CLOEXEC, 0o600)
        guard fresh >= 0 else {
            logger.error("dedup journal compaction failed", metadata: ["journal": "\(path)", "error": "open temporary: \(String(cString: strerror(errno)))"])
            return nil
        }
        guard writeAll(fresh, bytes, at: 0), fsync(fresh) == 0 else {
            let reason = String(cString: strerror(errno))
            close(fresh)
            unlink(temporary)
            logger.error("dedup journal compaction failed", metadata: ["journal": "\(path)", "error": "write temporary: \(reason)"])
            return nil
        }
        return (fresh, Int64(bytes.count))
    }

    /// Under the lock: copies the records appended since `mark` into `fresh`, renames it over the
    /// journal and uses it from now on. On failure the old file stays in use (logged).
    func switchTo(_ fresh: (descriptor: Int32, length: Int64), liveCount: Int, copyingFrom mark: Int64) {
        let temporary = path + ".tmp"
        var tail = [UInt8](repeating: 0, count: Int(max(0, length - mark)))
        let copied = tail.isEmpty || (tail.withUnsafeMutableBytes { pread(descriptor, $0.baseAddress, $0.count, off_t(mark)) } == tail.count
            && Self.writeAll(fresh.descriptor, tail, at: off_t(fresh.length)))
        guard copied, rename(temporary, path) == 0 else {
            let error = failure("switch to the compacted file")
            close(fresh.descriptor)
            unlink(temporary)
            logger.error("dedup journal compaction failed", metadata: ["journal": "\(path)", "error": "\(error)"])
            return
        }
        let before = records
        let tailRecords = tail.count / DedupJournal.recordSize
        close(descriptor)
        descriptor = fresh.descriptor
        length = fresh.length + Int64(tail.count)
        records = liveCount + tailRecords
        unsynced = tailRecords  // the copied tail is synced by the next background sync
        logger.debug("dedup journal compacted", metadata: ["journal": "\(path)", "records_before": "\(before)", "records": "\(records)"])
    }

    private func syncDirectory() { Self.syncDirectory(of: path) }

    /// `fsync` of the directory holding `path`, so a rename in it survives a crash.
    static func syncDirectory(of path: String) {
        var directory = "."
        if let slash = path.lastIndex(of: "/") {
            let parent = String(path[..<slash])
            directory = parent.isEmpty ? "/" : parent
        }
        let directoryDescriptor = open(directory, O_RDONLY | O_CLOEXEC)
        guard directoryDescriptor >= 0 else { return }
        fsync(directoryDescriptor)
        close(directoryDescriptor)
    }

    private static func writeAll(_ descriptor: Int32, _ bytes: [UInt8], at offset: off_t) -> Bool {
        bytes.withUnsafeBytes { buffer in
            var written = 0
            while written < buffer.count {
                let count = pwrite(descriptor, buffer.baseAddress! + written, buffer.count - written, offset + off_t(written))
                if count < 0 {
                    if errno == EINTR { continue }
                    return false
                }
                written += count
            }
            return true
        }
    }
}
