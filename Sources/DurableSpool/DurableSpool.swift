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

    public var description: String {
        switch self {
        case .full(let limit): "spool full (limit \(limit) bytes)"
        case .unwritable(let reason): "spool unwritable: \(reason)"
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
/// appends are grouped: each flush writes everything queued, then syncs once, so an outage costs one
/// `fsync` per flush, not per request.
///
/// Recovery: on start, segments left by an earlier run are read back; a torn or corrupt span (bad
/// magic, length or CRC-32) is reported, copied to `corrupt/`, and skipped by resynchronising on the
/// next valid record, so it never blocks the records after it.
///
/// Forwarding: ``lease(maxRecords:)`` hands out records in order; ``acknowledge(_:)`` removes them
/// (a segment file is deleted once all its records are acknowledged); ``release(_:)`` returns them.
///
/// Threading: all file I/O runs on one serial dispatch queue, never on Swift's cooperative pool.
/// Every method is safe from any task.
public final class DurableSpool: Sendable {
    public let configuration: DurableSpoolConfiguration
    private let logger: Logger
    private let queue = DispatchQueue(label: "tc-bridge.spool")
    private let inbox = Mutex<Inbox>(Inbox())
    private let store: UnsafeTransfer<Store>
    private let published = Mutex<(depth: SpoolDepth, corruptSpans: Int, syncs: Int, unavailable: String?)>((SpoolDepth(records: 0, bytes: 0), 0, 0, nil))

    private struct Inbox {
        var appends: [(payload: [UInt8], continuation: CheckedContinuation<Result<Void, SpoolError>, Never>)] = []
        var flushScheduled = false
    }

    /// Opens (creating if needed) the spool directory and recovers what an earlier run left.
    /// Never throws: an unusable directory leaves the spool ``unavailableReason`` set, and appends fail.
    public init(configuration: DurableSpoolConfiguration, logger: Logger) {
        self.configuration = configuration
        self.logger = logger
        let store = Store(configuration: configuration, logger: logger)
        self.store = UnsafeTransfer(store)
        queue.sync { store.recover() }
        publishStatus()
    }

    /// Records waiting or in flight, and bytes on disk.
    public var depth: SpoolDepth { published.withLock { $0.depth } }
    /// Damaged spans found during recovery (each reported and kept aside).
    public var corruptSpans: Int { published.withLock { $0.corruptSpans } }
    /// `fsync` calls made for appends so far (concurrent appends share one).
    public var syncCount: Int { published.withLock { $0.syncs } }
    /// Why the spool cannot take appends, if it cannot.
    public var unavailableReason: String? { published.withLock { $0.unavailable } }

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

    /// Up to `maxRecords` records not yet leased, oldest first; they stay leased until acknowledged or released.
    public func lease(maxRecords: Int) async -> [SpoolRecord] {
        await withCheckedContinuation { continuation in
            queue.async {
                let records = self.store.value.lease(maxRecords: maxRecords)
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
    /// `corrupt/` first so nothing silently disappears.
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
        let status = (SpoolDepth(records: store.outstandingCount, bytes: store.totalBytes), store.corruptSpans, store.syncs, store.unavailable)
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
        var size: Int64
        var outstanding: Int
    }

    struct Entry {
        let id: SpoolRecord.ID
        let length: Int
    }

    let configuration: DurableSpoolConfiguration
    let logger: Logger
    var segments: [UInt64: Segment] = [:]
    var active: UInt64?
    var nextSequence: UInt64 = 1
    var available: Deque<Entry> = []
    var leased: [SpoolRecord.ID: Entry] = [:]
    var corruptSpans = 0
    var syncs = 0
    var unavailable: String?

    init(configuration: DurableSpoolConfiguration, logger: Logger) {
        self.configuration = configuration
        self.logger = logger
    }

    var outstandingCount: Int { available.count + leased.count }
    var totalBytes: Int64 { segments.values.reduce(0) { $0 + $1.size } }

    // MARK: Recovery

    func recover() {
        guard makeDirectory(configuration.directory) else {
            unavailable = "cannot create \(configuration.directory): \(String(cString: strerror(errno)))"
            logger.error("spool unavailable", metadata: ["reason": "\(unavailable!)"])
            return
        }
        let sequences = listSegments().sorted()
        nextSequence = (sequences.last ?? 0) + 1
        for sequence in sequences { recoverSegment(sequence) }
        if outstandingCount > 0 {
            logger.notice("spool holds records from an earlier run", metadata: ["records": "\(outstandingCount)", "bytes": "\(totalBytes)"])
        }
    }

    private func recoverSegment(_ sequence: UInt64) {
        let path = segmentPath(sequence)
        guard let data = readWholeFile(path) else {
            logger.error("cannot read spool segment; leaving it in place", metadata: ["path": "\(path)"])
            return
        }
        var entries: [Entry] = []
        data.withUnsafeBytes { bytes in
            var offset = 0
            while offset < bytes.count {
                switch RecordFormat.parse(bytes, at: offset) {
                case .record(let payload, let end):
                    entries.append(Entry(id: .init(segment: sequence, offset: Int64(offset)), length: payload.count))
                    offset = end
                case .damaged, .truncated:
                    let next = RecordFormat.resynchronise(bytes, after: offset) ?? bytes.count
                    keepAside(bytes, range: offset..<next, segment: sequence)
                    offset = next
                }
            }
        }
        let descriptor = open(path, O_RDONLY | O_CLOEXEC)
        if entries.isEmpty {
            if descriptor >= 0 { close(descriptor) }
            unlink(path)
            return
        }
        segments[sequence] = Segment(sequence: sequence, path: path, descriptor: descriptor, size: Int64(data.count), outstanding: entries.count)
        available.append(contentsOf: entries)
    }

    func keepAside(_ bytes: UnsafeRawBufferPointer, range: Range<Int>, segment: UInt64, offset: Int? = nil) {
        corruptSpans += 1
        let directory = configuration.directory + "/corrupt"
        _ = makeDirectory(directory)
        let path = "\(directory)/segment-\(segment)-offset-\(offset ?? range.lowerBound).bin"
        let descriptor = open(path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0o600)
        if descriptor >= 0 {
            _ = writeAll(descriptor, UnsafeRawBufferPointer(rebasing: bytes[range]))
            fsync(descriptor)
            close(descriptor)
        }
        logger.error(
            "spool record skipped and kept aside",
            metadata: ["segment": "\(segment)", "offset": "\(offset ?? range.lowerBound)", "bytes": "\(range.count)", "kept_at": "\(path)"])
    }

    // MARK: Appending

    func write(_ payloads: [[UInt8]]) -> [Result<Void, SpoolError>] {
        if let unavailable { return payloads.map { _ in .failure(.unwritable(unavailable)) } }
        var results: [Result<Void, SpoolError>] = []
        var written: [Entry] = []
        var total = totalBytes
        for payload in payloads {
            let framed = RecordFormat.frame(payload)
            guard total + Int64(framed.count) <= configuration.maxBytes else {
                results.append(.failure(.full(limit: configuration.maxBytes)))
                continue
            }
            do throws(SpoolError) {
                let sequence = try activeSegment(forAdding: Int64(framed.count))
                let offset = segments[sequence]!.size
                guard framed.withUnsafeBytes({ writeAll(segments[sequence]!.descriptor, $0) }) else {
                    throw SpoolError.unwritable("write failed: \(String(cString: strerror(errno)))")
                }
                segments[sequence]!.size += Int64(framed.count)
                // Counted at once, so a later record of this group cannot retire this segment.
                segments[sequence]!.outstanding += 1
                total += Int64(framed.count)
                written.append(Entry(id: .init(segment: sequence, offset: offset), length: payload.count))
                results.append(.success(()))
            } catch {
                results.append(.failure(error))
            }
        }
        guard !written.isEmpty else { return results }
        // One sync per segment the group wrote to (a group may cross a segment boundary).
        syncs += 1
        for sequence in Set(written.map(\.id.segment)) {
            guard let segment = segments[sequence], fsync(segment.descriptor) == 0 else {
                let reason = "fsync failed: \(String(cString: strerror(errno)))"
                logger.error("spool sync failed", metadata: ["reason": "\(reason)"])
                // The records stay counted (their bytes are in the file and come back after a
                // restart); their requests are answered as failed.
                return results.map { result in result.flatMap { .failure(.unwritable(reason)) } }
            }
        }
        available.append(contentsOf: written)
        return results
    }

    private func activeSegment(forAdding bytes: Int64) throws(SpoolError) -> UInt64 {
        if let active, let segment = segments[active], segment.size == 0 || segment.size + bytes <= configuration.segmentBytes {
            return active
        }
        if let active, segments[active]?.outstanding == 0 { removeSegment(active) }
        let sequence = nextSequence
        nextSequence += 1
        let path = segmentPath(sequence)
        let descriptor = open(path, O_RDWR | O_CREAT | O_EXCL | O_APPEND | O_CLOEXEC, 0o600)
        guard descriptor >= 0 else { throw SpoolError.unwritable("cannot create \(path): \(String(cString: strerror(errno)))") }
        syncDirectory()
        segments[sequence] = Segment(sequence: sequence, path: path, descriptor: descriptor, size: 0, outstanding: 0)
        active = sequence
        return sequence
    }

    // MARK: Forwarding

    func lease(maxRecords: Int) -> [SpoolRecord] {
        var records: [SpoolRecord] = []
        while records.count < maxRecords, let entry = available.first {
            available.removeFirst()
            guard let segment = segments[entry.id.segment], let payload = readPayload(entry, from: segment) else {
                logger.error("cannot read spooled record; kept for a later attempt", metadata: ["segment": "\(entry.id.segment)"])
                available.append(entry)
                break
            }
            leased[entry.id] = entry
            records.append(SpoolRecord(id: entry.id, payload: payload))
        }
        return records
    }

    func setAside(_ records: [SpoolRecord]) {
        for record in records {
            let framed = RecordFormat.frame(record.payload)
            // Named by the record's own offset, so records set aside from one segment never share a file.
            framed.withUnsafeBytes {
                keepAside($0, range: 0..<framed.count, segment: record.id.segment, offset: Int(record.id.offset))
            }
        }
        acknowledge(records.map(\.id))
    }

    func release(_ ids: [SpoolRecord.ID]) {
        let returned = ids.compactMap { leased.removeValue(forKey: $0) }.sorted { $0.id < $1.id }
        for entry in returned.reversed() { available.prepend(entry) }
    }

    func acknowledge(_ ids: [SpoolRecord.ID]) {
        for id in ids {
            guard leased.removeValue(forKey: id) != nil, segments[id.segment] != nil else { continue }
            segments[id.segment]!.outstanding -= 1
            // Fully confirmed (even the active segment): delete now, so a restart cannot resurrect it.
            if segments[id.segment]!.outstanding == 0 { removeSegment(id.segment) }
        }
    }

    private func removeSegment(_ sequence: UInt64) {
        guard let segment = segments.removeValue(forKey: sequence) else { return }
        if segment.descriptor >= 0 { close(segment.descriptor) }
        unlink(segment.path)
        if active == sequence { active = nil }
    }

    private func readPayload(_ entry: Entry, from segment: Segment) -> [UInt8]? {
        var payload = [UInt8](repeating: 0, count: entry.length)
        let start = entry.id.offset + Int64(RecordFormat.headerSize)
        var done = 0
        while done < entry.length {
            let count = payload.withUnsafeMutableBytes { buffer in
                pread(segment.descriptor, buffer.baseAddress! + done, entry.length - done, off_t(start) + off_t(done))
            }
            if count <= 0 { return entry.length == 0 ? payload : nil }
            done += count
        }
        return payload
    }

    // MARK: Files

    private func segmentPath(_ sequence: UInt64) -> String {
        let digits = String(sequence)
        return "\(configuration.directory)/segment-\(String(repeating: "0", count: max(0, 12 - digits.count)))\(digits).spool"
    }

    private func listSegments() -> [UInt64] {
        guard let directory = opendir(configuration.directory) else { return [] }
        defer { closedir(directory) }
        var sequences: [UInt64] = []
        while let entry = readdir(directory) {
            let name = withUnsafeBytes(of: entry.pointee.d_name) { raw in
                String(decoding: raw.prefix { $0 != 0 }, as: UTF8.self)
            }
            guard name.hasPrefix("segment-"), name.hasSuffix(".spool") else { continue }
            if let sequence = UInt64(name.dropFirst("segment-".count).dropLast(".spool".count)) { sequences.append(sequence) }
        }
        return sequences
    }

    private func syncDirectory() {
        let descriptor = open(configuration.directory, O_RDONLY | O_DIRECTORY | O_CLOEXEC)
        guard descriptor >= 0 else { return }
        fsync(descriptor)
        close(descriptor)
    }

    private func makeDirectory(_ path: String) -> Bool {
        var components: [Substring] = []
        for component in path.split(separator: "/", omittingEmptySubsequences: true) {
            components.append(component)
            let partial = (path.hasPrefix("/") ? "/" : "") + components.joined(separator: "/")
            if mkdir(partial, 0o700) != 0 && errno != EEXIST { return false }
        }
        return access(path, W_OK) == 0
    }

    private func readWholeFile(_ path: String) -> [UInt8]? {
        let descriptor = open(path, O_RDONLY | O_CLOEXEC)
        guard descriptor >= 0 else { return nil }
        defer { close(descriptor) }
        var result: [UInt8] = []
        var buffer = [UInt8](repeating: 0, count: 1 << 16)
        while true {
            let count = read(descriptor, &buffer, buffer.count)
            if count < 0 { return nil }
            if count == 0 { return result }
            result.append(contentsOf: buffer[0..<count])
        }
    }
}

/// Writes every byte (retrying short writes and EINTR); `false` on error.
private func writeAll(_ descriptor: Int32, _ bytes: UnsafeRawBufferPointer) -> Bool {
    var done = 0
    while done < bytes.count {
        let count = write(descriptor, bytes.baseAddress! + done, bytes.count - done)
        if count < 0 {
            if errno == EINTR { continue }
            return false
        }
        done += count
    }
    return true
}
