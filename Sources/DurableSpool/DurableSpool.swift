import DequeModule
import Dispatch
import Logging
import Synchronization

#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

/// Configuration of a ``DurableSpool``.
public struct DurableSpoolConfiguration: Sendable {
    /// Directory for segment files; created if missing. Damaged bytes found on recovery go to `corrupt/` in it.
    public var directory: String
    /// Appends that would take the spool's files past this size fail with ``SpoolError/full(limit:)``.
    public var maxBytes: Int64
    /// A new segment file starts once the current one reaches this size.
    public var segmentBytes: Int64

    public init(directory: String, maxBytes: Int64 = 1 << 30, segmentBytes: Int64 = 64 << 20) {
        self.directory = directory
        self.maxBytes = maxBytes
        self.segmentBytes = segmentBytes
    }
}

/// Why an append failed. Nothing was made durable; the caller must not acknowledge the data.
public enum SpoolError: Error, Sendable, Equatable, CustomStringConvertible {
    case full(limit: Int64)
    case unwritable(String)
    /// The record is larger than one spool record can hold; it is refused, never written.
    case recordTooLarge(bytes: Int, limit: Int)

    public var description: String {
        switch self {
        case .full(let limit): "spool full (limit \(limit) bytes)"
        case .unwritable(let reason): "spool unwritable: \(reason)"
        case .recordTooLarge(let bytes, let limit): "record of \(bytes) bytes is larger than a spool record may be (\(limit) bytes)"
        }
    }
}

/// One record waiting to be forwarded.
public struct SpoolRecord: Sendable {
    public struct ID: Sendable, Hashable, Comparable {
        let segment: UInt64
        let offset: Int64
        public static func < (lhs: ID, rhs: ID) -> Bool { (lhs.segment, lhs.offset) < (rhs.segment, rhs.offset) }
    }

    public let id: ID
    public let payload: [UInt8]
}

/// How much the spool holds.
public struct SpoolDepth: Sendable, Equatable {
    /// Records not yet acknowledged (waiting or being forwarded).
    public var records: Int
    /// Bytes of the spool's segment files on disk.
    public var bytes: Int64
}

/// An append-only, checksummed, crash-safe queue of opaque records on disk.
///
/// Durability: ``append(_:)`` returns only after the record is written and `fsync`ed. Concurrent
/// appends are grouped: each flush writes everything queued, then syncs once per segment it wrote
/// to, so an outage costs one `fsync` per flush, not per request. A failed or short write is cut
/// off again (`ftruncate`) so the next record starts where the index says; a segment that cannot be
/// cut back, or whose `fsync` failed, takes no more appends (a new segment starts). Creating and
/// deleting a segment `fsync`s the directory.
///
/// Recovery: on start, segments left by an earlier run are read back; a torn or corrupt span (bad
/// magic, length or CRC-32) is reported, copied to `corrupt/`, and skipped by resynchronising on the
/// next valid record, so it never blocks the records after it. A record whose bytes no longer match
/// when it is read for forwarding is never handed out: it is reported and kept on disk.
///
/// Exclusive: the spool holds `flock` on `<directory>/lock`; a second spool on the same directory
/// (in this or another process) is unavailable (``isLockedByAnotherProcess``) and touches no file.
///
/// Forwarding: ``lease(maxRecords:)`` hands out records in order; ``acknowledge(_:)`` removes them
/// (a segment file is deleted once all its records are acknowledged); ``release(_:)`` returns them.
///
/// Threading: all file I/O runs on one serial dispatch queue, never on Swift's cooperative pool.
/// Every method is safe from any task.
public final class DurableSpool: Sendable {
    /// Attempts to hold the directory's lock before the spool is refused as in use elsewhere, 20 ms
    /// apart. A lock just released can still be held for a moment: a child this process (or the
    /// previous owner) is spawning holds a copy of the descriptor between its fork and its exec.
    static let lockAttempts = 10

    public let configuration: DurableSpoolConfiguration
    private let logger: Logger
    private let queue = DispatchQueue(label: "tc-bridge.spool")
    private let inbox = Mutex<Inbox>(Inbox())
    private let store: UnsafeTransfer<Store>
    private let published = Mutex<Status>(Status())

    private struct Status {
        var depth = SpoolDepth(records: 0, bytes: 0)
        var corruptSpans = 0
        var syncs = 0
        var unavailable: String?
        var lockedElsewhere = false
        var oldestSince: ContinuousClock.Instant?
    }

    private struct Inbox {
        var appends: [(payload: [UInt8], continuation: CheckedContinuation<Result<Void, SpoolError>, Never>)] = []
        var flushScheduled = false
    }

    /// Opens (creating if needed) the spool directory and recovers what an earlier run left.
    /// Never throws: an unusable directory leaves the spool ``unavailableReason`` set, and appends fail.
    public convenience init(configuration: DurableSpoolConfiguration, logger: Logger) {
        self.init(configuration: configuration, logger: logger, fileSystem: POSIXSpoolFileSystem())
    }

    /// The same, on a given file system (tests inject failures and crashes through it).
    init(configuration: DurableSpoolConfiguration, logger: Logger, fileSystem: any SpoolFileSystem) {
        self.configuration = configuration
        self.logger = logger
        let store = Store(configuration: configuration, logger: logger, fileSystem: fileSystem)
        self.store = UnsafeTransfer(store)
        queue.sync { store.recover() }
        publishStatus()
    }

    /// Records waiting or in flight, and bytes on disk.
    public var depth: SpoolDepth { published.withLock { $0.depth } }
    /// How long the oldest record still in the spool has been there (for records recovered from an
    /// earlier run: since this process recovered them); `nil` when the spool is empty.
    public var oldestRecordAge: Duration? {
        published.withLock { $0.oldestSince }.map { ContinuousClock.now - $0 }
    }
    /// Damaged spans found during recovery (each reported and kept aside).
    public var corruptSpans: Int { published.withLock { $0.corruptSpans } }
    /// `fsync` calls made for appends so far (concurrent appends share one).
    public var syncCount: Int { published.withLock { $0.syncs } }
    /// Why the spool cannot take appends, if it cannot.
    public var unavailableReason: String? { published.withLock { $0.unavailable } }
    /// Another spool (another process, or another instance in this one) holds the directory's lock;
    /// this one touched nothing and takes no appends. A bridge must not start on such a directory.
    public var isLockedByAnotherProcess: Bool { published.withLock { $0.lockedElsewhere } }

    /// Appends `payload` durably. Returns after the bytes are on disk (`fsync`).
    public func append(_ payload: [UInt8]) async throws(SpoolError) {
        let result = await withCheckedContinuation { (continuation: CheckedContinuation<Result<Void, SpoolError>, Never>) in
            let schedule = inbox.withLock { inbox in
                inbox.appends.append((payload, continuation))
                defer { inbox.flushScheduled = true }
                return !inbox.flushScheduled
            }
            if schedule { queue.async { self.flush() } }
        }
        try result.get()
    }

    /// Appends `payloads` as one group commit (what concurrent ``append(_:)`` calls share), one
    /// result each. For tests that need a deterministic grouping.
    func appendGroup(_ payloads: [[UInt8]]) async -> [Result<Void, SpoolError>] {
        await withCheckedContinuation { continuation in
            queue.async {
                let results = self.store.value.write(payloads)
                self.publishStatus()
                continuation.resume(returning: results)
            }
        }
    }

    // Synchronous forms for a test that drives the spool from a thread of its own (the model test,
    // which would otherwise flood the cooperative pool): the same store code on the same queue.
    func appendGroupSynchronously(_ payloads: [[UInt8]]) -> [Result<Void, SpoolError>] {
        queue.sync {
            let results = store.value.write(payloads)
            publishStatus()
            return results
        }
    }
    func leaseSynchronously(maxRecords: Int) -> [SpoolRecord] {
        queue.sync {
            let records = store.value.lease(maxRecords: maxRecords)
            publishStatus()
            return records
        }
    }
    func acknowledgeSynchronously(_ ids: [SpoolRecord.ID]) {
        queue.sync {
            store.value.acknowledge(ids)
            publishStatus()
        }
    }
    func releaseSynchronously(_ ids: [SpoolRecord.ID]) { queue.sync { store.value.release(ids) } }
    func closeSynchronously() {
        queue.sync {
            store.value.closeAll(reason: "spool closed")
            publishStatus()
        }
    }

    /// Closes every file and releases the directory's lock; the spool takes nothing more.
    /// (Deinitialising does the same; tests reopen a directory after this.)
    func close() async {
        await withCheckedContinuation { (continuation: CheckedContinuation<Void, Never>) in
            queue.async {
                self.store.value.closeAll(reason: "spool closed")
                self.publishStatus()
                continuation.resume()
            }
        }
    }

    /// Up to `maxRecords` records not yet leased, oldest first; they stay leased until acknowledged or released.
    public func lease(maxRecords: Int) async -> [SpoolRecord] {
        await withCheckedContinuation { continuation in
            queue.async {
                let records = self.store.value.lease(maxRecords: maxRecords)
                self.publishStatus()
                continuation.resume(returning: records)
            }
        }
    }

    /// Forgets confirmed records; deletes segment files that hold nothing else.
    public func acknowledge(_ ids: [SpoolRecord.ID]) async {
        await withCheckedContinuation { (continuation: CheckedContinuation<Void, Never>) in
            queue.async {
                self.store.value.acknowledge(ids)
                self.publishStatus()
                continuation.resume()
            }
        }
    }

    /// Removes leased records that can never be forwarded (unreadable payloads), copying them to
    /// `corrupt/` first so nothing silently disappears. A record whose copy cannot be made durable
    /// stays in the spool (not leased again before a restart).
    public func setAside(_ records: [SpoolRecord]) async {
        await withCheckedContinuation { (continuation: CheckedContinuation<Void, Never>) in
            queue.async {
                self.store.value.setAside(records)
                self.publishStatus()
                continuation.resume()
            }
        }
    }

    /// Makes leased records available again (their forwarding failed).
    public func release(_ ids: [SpoolRecord.ID]) async {
        await withCheckedContinuation { (continuation: CheckedContinuation<Void, Never>) in
            queue.async {
                self.store.value.release(ids)
                continuation.resume()
            }
        }
    }

    /// Group commit: runs on the queue; takes every queued append, writes them, syncs once.
    private func flush() {
        let batch = inbox.withLock { inbox in
            defer {
                inbox.appends.removeAll()
                inbox.flushScheduled = false
            }
            return inbox.appends
        }
        let results = store.value.write(batch.map(\.payload))
        publishStatus()
        for (entry, result) in zip(batch, results) { entry.continuation.resume(returning: result) }
    }

    private func publishStatus() {
        let store = store.value
        var oldest = store.available.first?.since
        for entry in store.leased.values where oldest.map({ entry.since < $0 }) ?? true { oldest = entry.since }
        let status = Status(
            depth: SpoolDepth(records: store.outstandingCount, bytes: store.totalBytes), corruptSpans: store.corruptSpans,
            syncs: store.syncs, unavailable: store.unavailable, lockedElsewhere: store.lockedElsewhere, oldestSince: oldest)
        published.withLock { $0 = status }
    }
}

/// Moves a non-Sendable value confined to the spool's serial queue.
private final class UnsafeTransfer<Value>: @unchecked Sendable {
    let value: Value
    init(_ value: Value) { self.value = value }
}

/// The spool's state; used only on its serial queue.
private final class Store {
    struct Segment {
        let sequence: UInt64
        let path: String
        var descriptor: Int32
        /// Bytes of whole, indexed records; appends go here (the file is cut back to it after a failed write).
        var size: Int64
        var outstanding: Int
        /// `false` once the segment takes no more appends (recovered, rotated, or its tail is in doubt).
        var writable: Bool
    }

    struct Entry {
        let id: SpoolRecord.ID
        let length: Int
        /// When this process appended or recovered the record.
        var since = ContinuousClock.now
    }

    let configuration: DurableSpoolConfiguration
    let logger: Logger
    let fileSystem: any SpoolFileSystem
    var segments: [UInt64: Segment] = [:]
    var active: UInt64?
    var nextSequence: UInt64 = 1
    var available: Deque<Entry> = []
    var leased: [SpoolRecord.ID: Entry] = [:]
    /// Records that could not be read back intact, or set aside: kept on disk (and counted), never
    /// handed out again before a restart re-reads their segment.
    var held: [SpoolRecord.ID: Entry] = [:]
    var lockDescriptor: Int32?
    var corruptSpans = 0
    var syncs = 0
    var unavailable: String?
    var lockedElsewhere = false

    init(configuration: DurableSpoolConfiguration, logger: Logger, fileSystem: any SpoolFileSystem) {
        self.configuration = configuration
        self.logger = logger
        self.fileSystem = fileSystem
    }

    deinit { closeAll(reason: "spool closed") }

    /// `flock` on `descriptor`, retried briefly while another holder may be letting go (see `DurableSpool.lockAttempts`).
    static func lockExclusive(_ descriptor: Int32, fileSystem: any SpoolFileSystem) -> Result<Void, SpoolErrno> {
        var attempt = 1
        while true {
            let result = fileSystem.lockExclusive(descriptor)
            guard case .failure(let error) = result, error.code == EWOULDBLOCK || error.code == EAGAIN, attempt < DurableSpool.lockAttempts else {
                return result
            }
            attempt += 1
            usleep(20_000)
        }
    }

    var outstandingCount: Int { available.count + leased.count + held.count }
    var totalBytes: Int64 { segments.values.reduce(0) { $0 + $1.size } }

    func closeAll(reason: String) {
        for segment in segments.values where segment.descriptor >= 0 { fileSystem.close(segment.descriptor) }
        segments.removeAll()
        available.removeAll()
        leased.removeAll()
        held.removeAll()
        active = nil
        if let lockDescriptor { fileSystem.close(lockDescriptor) }
        lockDescriptor = nil
        if unavailable == nil { unavailable = reason }
    }

    // MARK: Recovery

    func recover() {
        let directory = configuration.directory
        if case .failure(let error) = fileSystem.makeDirectories(directory) {
            return markUnavailable("cannot create \(directory): \(error)")
        }
        // The lock first: a second spool on this directory must not read, delete or append anything.
        let lockPath = directory + "/lock"
        switch fileSystem.open(lockPath, .lockFile) {
        case .failure(let error):
            return markUnavailable("cannot open \(lockPath): \(error)")
        case .success(let descriptor):
            switch Self.lockExclusive(descriptor, fileSystem: fileSystem) {
            case .success:
                lockDescriptor = descriptor
            case .failure(let error):
                fileSystem.close(descriptor)
                if error.code == EWOULDBLOCK || error.code == EAGAIN {
                    lockedElsewhere = true
                    return markUnavailable("spool directory \(directory) is in use by another tc-bridge process (\(lockPath) is locked)")
                }
                return markUnavailable("cannot lock \(lockPath): \(error)")
            }
        }
        let names: [String]
        switch fileSystem.listDirectory(directory) {
        case .failure(let error): return markUnavailable("cannot list \(directory): \(error)")
        case .success(let listed): names = listed
        }
        let sequences = names.compactMap(Self.segmentSequence).sorted()
        for name in names where name.hasPrefix("segment-") && name.hasSuffix(".spool") && Self.segmentSequence(name) == nil {
            logger.warning("not a spool segment's name (the spool writes them itself); left alone", metadata: ["name": "\(name)"])
        }
        nextSequence = (sequences.last ?? 0) + 1
        for sequence in sequences { recoverSegment(sequence) }
        if outstandingCount > 0 {
            logger.notice("spool holds records from an earlier run", metadata: ["records": "\(outstandingCount)", "bytes": "\(totalBytes)"])
        }
    }

    private func markUnavailable(_ reason: String) {
        unavailable = reason
        logger.error("spool unavailable", metadata: ["reason": "\(reason)"])
    }

    private func recoverSegment(_ sequence: UInt64) {
        let path = segmentPath(sequence)
        let descriptor: Int32
        switch fileSystem.open(path, .readOnly) {
        case .failure(let error):
            logger.error("cannot open spool segment; leaving it in place", metadata: ["path": "\(path)", "error": "\(error)"])
            return
        case .success(let opened): descriptor = opened
        }
        guard let data = readWholeFile(descriptor) else {
            fileSystem.close(descriptor)
            logger.error("cannot read spool segment; leaving it in place", metadata: ["path": "\(path)"])
            return
        }
        var entries: [Entry] = []
        var everythingKept = true
        data.withUnsafeBytes { bytes in
            var offset = 0
            while offset < bytes.count {
                switch RecordFormat.parse(bytes, at: offset) {
                case .record(let payload, let end):
                    entries.append(Entry(id: .init(segment: sequence, offset: Int64(offset)), length: payload.count))
                    offset = end
                case .damaged, .truncated:
                    let next = RecordFormat.resynchronise(bytes, after: offset) ?? bytes.count
                    if !keepAside(bytes, range: offset..<next, segment: sequence) { everythingKept = false }
                    offset = next
                }
            }
        }
        if entries.isEmpty {
            fileSystem.close(descriptor)
            // Only damage in it; deleted once that damage is safely copied aside.
            if everythingKept { removeFile(path) }
            return
        }
        segments[sequence] = Segment(
            sequence: sequence, path: path, descriptor: descriptor, size: Int64(data.count), outstanding: entries.count, writable: false)
        available.append(contentsOf: entries)
    }

    /// Copies a damaged or unforwardable span to `corrupt/`, durably; `false` if that failed.
    ///
    /// Never over another file there: segment numbers start again at 1 once the spool has emptied,
    /// so a later run can set aside a span with the same segment and offset as one still waiting
    /// for `spool replay`. That name then gets a suffix (`-2`, `-3`, …); a file already holding
    /// exactly these bytes (the same span, kept by an earlier run that then stopped) counts as kept.
    @discardableResult
    func keepAside(_ bytes: UnsafeRawBufferPointer, range: Range<Int>, segment: UInt64, offset: Int? = nil) -> Bool {
        corruptSpans += 1
        let directory = configuration.directory + "/corrupt"
        let stem = "\(directory)/segment-\(segment)-offset-\(offset ?? range.lowerBound)"
        let span = UnsafeRawBufferPointer(rebasing: bytes[range])
        var path = stem + ".bin"
        var failure: SpoolErrno?
        if case .failure(let error) = fileSystem.makeDirectories(directory) {
            failure = error
        } else {
            var attempt = 1
            while true {
                switch fileSystem.open(path, .createExclusive) {
                case .failure(let error) where error.code == EEXIST && attempt < Self.keptAsideNamesPerSpan:
                    if holds(path, exactly: span) {
                        logger.notice("spool record skipped; already kept aside", metadata: ["kept_at": "\(path)"])
                        return true
                    }
                    attempt += 1
                    path = "\(stem)-\(attempt).bin"
                    continue
                case .failure(let error):
                    failure = error
                case .success(let descriptor):
                    if let error = writeAll(descriptor, span, at: 0) {
                        failure = error
                    } else if case .failure(let error) = fileSystem.fsync(descriptor) {
                        failure = error
                    }
                    fileSystem.close(descriptor)
                    if failure == nil, let error = syncDirectory(directory) { failure = error }
                }
                break
            }
        }
        if let failure {
            logger.error(
                "spool record skipped but could not be kept aside",
                metadata: ["segment": "\(segment)", "offset": "\(offset ?? range.lowerBound)", "bytes": "\(range.count)", "error": "\(failure)"])
            return false
        }
        logger.error(
            "spool record skipped and kept aside",
            metadata: ["segment": "\(segment)", "offset": "\(offset ?? range.lowerBound)", "bytes": "\(range.count)", "kept_at": "\(path)"])
        return true
    }

    /// Names tried for one span under `corrupt/` before giving up (see ``keepAside(_:range:segment:offset:)``).
    static let keptAsideNamesPerSpan = 1000

    /// `true` when the file at `path` holds exactly `bytes`.
    private func holds(_ path: String, exactly bytes: UnsafeRawBufferPointer) -> Bool {
        guard case .success(let descriptor) = fileSystem.open(path, .readOnly) else { return false }
        defer { fileSystem.close(descriptor) }
        guard let existing = readWholeFile(descriptor) else { return false }
        return existing.elementsEqual(bytes)
    }

    // MARK: Appending

    func write(_ payloads: [[UInt8]]) -> [Result<Void, SpoolError>] {
        if let unavailable { return payloads.map { _ in .failure(.unwritable(unavailable)) } }
        var results = [Result<Void, SpoolError>](repeating: .success(()), count: payloads.count)
        var written: [(index: Int, entry: Entry)] = []
        var total = totalBytes
        for (index, payload) in payloads.enumerated() {
            guard payload.count <= RecordFormat.maximumPayload else {
                results[index] = .failure(.recordTooLarge(bytes: payload.count, limit: RecordFormat.maximumPayload))
                continue
            }
            let framed = RecordFormat.frame(payload)
            guard total + Int64(framed.count) <= configuration.maxBytes else {
                results[index] = .failure(.full(limit: configuration.maxBytes))
                continue
            }
            do throws(SpoolError) {
                let sequence = try activeSegment(forAdding: Int64(framed.count))
                guard let segment = segments[sequence] else { throw SpoolError.unwritable("segment \(sequence) vanished") }
                if let error = framed.withUnsafeBytes({ writeAll(segment.descriptor, $0, at: segment.size) }) {
                    // Cut off whatever part of the record reached the file, so the next record starts
                    // where the index says; if that fails, this segment takes nothing more.
                    if case .failure(let truncateError) = fileSystem.ftruncate(segment.descriptor, to: segment.size) {
                        logger.error(
                            "cannot cut a failed write off a spool segment; starting a new segment",
                            metadata: ["path": "\(segment.path)", "error": "\(truncateError)"])
                        retire(sequence)
                    }
                    throw SpoolError.unwritable("write failed: \(error)")
                }
                segments[sequence]?.size += Int64(framed.count)
                // Counted at once, so a later record of this group cannot retire this segment.
                segments[sequence]?.outstanding += 1
                total += Int64(framed.count)
                written.append((index, Entry(id: .init(segment: sequence, offset: segment.size), length: payload.count)))
            } catch {
                results[index] = .failure(error)
            }
        }
        guard !written.isEmpty else { return results }
        // One sync per segment the group wrote to (a group may cross a segment boundary).
        syncs += 1
        var failedSyncs: [UInt64: SpoolErrno] = [:]
        for sequence in Set(written.map(\.entry.id.segment)).sorted() {
            guard let segment = segments[sequence] else {
                failedSyncs[sequence] = SpoolErrno(EBADF)
                continue
            }
            if case .failure(let error) = fileSystem.fsync(segment.descriptor) {
                logger.error("spool sync failed; starting a new segment", metadata: ["path": "\(segment.path)", "error": "\(error)"])
                failedSyncs[sequence] = error
                // After a failed fsync the state of its pages is unknown: append nothing more there.
                retire(sequence)
            }
        }
        for (index, entry) in written {
            // Records whose sync failed stay counted and are forwarded (their bytes are readable, so
            // at-least-once); their requests are answered as failed.
            available.append(entry)
            if let error = failedSyncs[entry.id.segment] { results[index] = .failure(.unwritable("fsync failed: \(error)")) }
        }
        return results
    }

    private func activeSegment(forAdding bytes: Int64) throws(SpoolError) -> UInt64 {
        if let active, let segment = segments[active], segment.writable,
            segment.size == 0 || segment.size + bytes <= configuration.segmentBytes
        {
            return active
        }
        if let active { retire(active) }
        let sequence = nextSequence
        nextSequence += 1
        let path = segmentPath(sequence)
        let descriptor: Int32
        switch fileSystem.open(path, .createExclusive) {
        case .failure(let error): throw SpoolError.unwritable("cannot create \(path): \(error)")
        case .success(let opened): descriptor = opened
        }
        // The new name must be durable before any record in it is acknowledged.
        if let error = syncDirectory(configuration.directory) {
            fileSystem.close(descriptor)
            _ = fileSystem.unlink(path)
            throw SpoolError.unwritable("cannot sync \(configuration.directory) after creating \(path): \(error)")
        }
        segments[sequence] = Segment(sequence: sequence, path: path, descriptor: descriptor, size: 0, outstanding: 0, writable: true)
        active = sequence
        return sequence
    }

    /// The segment takes no more appends; deleted at once if nothing in it is outstanding.
    private func retire(_ sequence: UInt64) {
        segments[sequence]?.writable = false
        if active == sequence { active = nil }
        if segments[sequence]?.outstanding == 0 { removeSegment(sequence) }
    }

    // MARK: Forwarding

    func lease(maxRecords: Int) -> [SpoolRecord] {
        var records: [SpoolRecord] = []
        while records.count < maxRecords, let entry = available.popFirst() {
            let result: Result<[UInt8], ReadFailure>
            if let segment = segments[entry.id.segment] {
                result = readPayload(entry, from: segment)
            } else {
                result = .failure(ReadFailure(reason: "its segment is not open"))
            }
            switch result {
            case .success(let payload):
                leased[entry.id] = entry
                records.append(SpoolRecord(id: entry.id, payload: payload))
            case .failure(let failure):
                // Never forward bytes that are not the record the index points at, and never let the
                // segment be deleted under it: kept on disk until a restart reads the segment again.
                held[entry.id] = entry
                logger.error(
                    "spooled record cannot be read back intact; not forwarded, kept on disk until a restart re-reads it",
                    metadata: ["segment": "\(entry.id.segment)", "offset": "\(entry.id.offset)", "reason": "\(failure.reason)"])
            }
        }
        return records
    }

    func setAside(_ records: [SpoolRecord]) {
        for record in records {
            guard leased[record.id] != nil else { continue }
            let framed = RecordFormat.frame(record.payload)
            // Named by the record's own offset, so records set aside from one segment never share a file.
            let kept = framed.withUnsafeBytes {
                keepAside($0, range: 0..<framed.count, segment: record.id.segment, offset: Int(record.id.offset))
            }
            if kept {
                acknowledge([record.id])
            } else if let entry = leased.removeValue(forKey: record.id) {
                held[record.id] = entry
            }
        }
    }

    func release(_ ids: [SpoolRecord.ID]) {
        let returned = ids.compactMap { leased.removeValue(forKey: $0) }.sorted { $0.id < $1.id }
        for entry in returned.reversed() { available.prepend(entry) }
    }

    func acknowledge(_ ids: [SpoolRecord.ID]) {
        for id in ids {
            guard leased.removeValue(forKey: id) != nil, var segment = segments[id.segment] else { continue }
            segment.outstanding -= 1
            segments[id.segment] = segment
            // Fully confirmed (even the active segment): delete now, so a restart cannot resurrect it.
            if segment.outstanding == 0 { removeSegment(id.segment) }
        }
    }

    private func removeSegment(_ sequence: UInt64) {
        guard let segment = segments.removeValue(forKey: sequence) else { return }
        if segment.descriptor >= 0 { fileSystem.close(segment.descriptor) }
        if active == sequence { active = nil }
        removeFile(segment.path)
    }

    /// Unlinks a file of the spool directory and syncs the directory, so the deletion survives a crash.
    private func removeFile(_ path: String) {
        if case .failure(let error) = fileSystem.unlink(path) {
            logger.error("cannot delete spool segment", metadata: ["path": "\(path)", "error": "\(error)"])
            return
        }
        if let error = syncDirectory(configuration.directory) {
            // Not fatal: a segment that comes back after a crash only repeats delivered records.
            logger.warning("cannot sync the spool directory after deleting a segment", metadata: ["path": "\(path)", "error": "\(error)"])
        }
    }

    struct ReadFailure: Error { let reason: String }

    /// The payload of `entry`, checked against its header: magic, the indexed length, and CRC-32.
    private func readPayload(_ entry: Entry, from segment: Segment) -> Result<[UInt8], ReadFailure> {
        let total = RecordFormat.headerSize + entry.length
        var bytes = [UInt8](repeating: 0, count: total)
        var done = 0
        while done < total {
            let result = bytes.withUnsafeMutableBytes { buffer in
                fileSystem.pread(segment.descriptor, into: UnsafeMutableRawBufferPointer(rebasing: buffer[done...]), at: entry.id.offset + Int64(done))
            }
            switch result {
            case .failure(let error): return .failure(ReadFailure(reason: "read failed: \(error)"))
            case .success(0): return .failure(ReadFailure(reason: "the segment ends \(total - done) bytes early"))
            case .success(let count): done += count
            }
        }
        let parsed = bytes.withUnsafeBytes { RecordFormat.parse($0, at: 0) }
        guard case .record(let payloadRange, _) = parsed, payloadRange == RecordFormat.headerSize..<total else {
            return .failure(ReadFailure(reason: "the bytes there are not this record (magic, length or checksum differ)"))
        }
        return .success(Array(bytes[payloadRange]))
    }

    // MARK: Files

    private func segmentPath(_ sequence: UInt64) -> String {
        "\(configuration.directory)/\(Self.segmentName(sequence))"
    }

    /// The sequence number of a segment's file name, exactly as ``segmentPath(_:)`` spells it (so two
    /// names cannot stand for one segment), and small enough that counting on from it cannot overflow.
    static func segmentSequence(_ name: String) -> UInt64? {
        guard name.hasPrefix("segment-"), name.hasSuffix(".spool"),
              let sequence = UInt64(name.dropFirst("segment-".count).dropLast(".spool".count)),
              sequence < maxSequence, segmentName(sequence) == name
        else { return nil }
        return sequence
    }

    /// Segment numbers from here on are not read back (a name an operator made; the spool counts
    /// from 1 and would need millions of years of segments to get here).
    static let maxSequence: UInt64 = 1 << 62

    private static func segmentName(_ sequence: UInt64) -> String {
        let digits = String(sequence)
        return "segment-\(String(repeating: "0", count: max(0, 12 - digits.count)))\(digits).spool"
    }

    /// `fsync` of a directory, so names created or removed in it survive a crash; the error if any.
    private func syncDirectory(_ path: String) -> SpoolErrno? {
        switch fileSystem.open(path, .directory) {
        case .failure(let error): return error
        case .success(let descriptor):
            defer { fileSystem.close(descriptor) }
            if case .failure(let error) = fileSystem.fsync(descriptor) { return error }
            return nil
        }
    }

    private func readWholeFile(_ descriptor: Int32) -> [UInt8]? {
        var result: [UInt8] = []
        var buffer = [UInt8](repeating: 0, count: 1 << 16)
        while true {
            let read = buffer.withUnsafeMutableBytes { fileSystem.pread(descriptor, into: $0, at: Int64(result.count)) }
            switch read {
            case .failure: return nil
            case .success(0): return result
            case .success(let count): result.append(contentsOf: buffer[0..<count])
            }
        }
    }

    /// Writes every byte at `offset` (retrying short writes); the error if any.
    private func writeAll(_ descriptor: Int32, _ bytes: UnsafeRawBufferPointer, at offset: Int64) -> SpoolErrno? {
        var done = 0
        while done < bytes.count {
            switch fileSystem.pwrite(descriptor, UnsafeRawBufferPointer(rebasing: bytes[done...]), at: offset + Int64(done)) {
            case .failure(let error): return error
            case .success(0): return SpoolErrno(ENOSPC)
            case .success(let count): done += count
            }
        }
        return nil
    }
}
