@testable import DurableSpool
import Foundation
import Logging
import Synchronization
import Testing

/// A spool on the simulated file system, quiet.
func simulatedSpool(_ fileSystem: SimulatedFileSystem, directory: String = "/spool", maxBytes: Int64 = 1 << 20, segmentBytes: Int64 = 64 << 10)
    -> DurableSpool
{
    var logger = Logger(label: "spool-tests")
    logger.logLevel = .critical
    return DurableSpool(
        configuration: .init(directory: directory, maxBytes: maxBytes, segmentBytes: segmentBytes), logger: logger, fileSystem: fileSystem)
}

private func record(_ index: Int, size: Int = 100) -> [UInt8] {
    Array("record-\(index)-".utf8) + [UInt8](repeating: UInt8(65 + index % 26), count: size)
}

/// Short writes, a full disk, failed `fsync`s and crashes, through the file-system seam.
@Suite struct SpoolFaultTests {
    @Test(arguments: 1...12 as ClosedRange<UInt64>)
    func aShortWriteIsCutOffSoLaterRecordsKeepTheirOffsets(seed: UInt64) async throws {
        let fileSystem = SimulatedFileSystem(seed: seed)
        let spool = simulatedSpool(fileSystem)
        try await spool.append(record(0))
        fileSystem.failNext(.write)  // part of the record reaches the file, then ENOSPC
        await #expect(throws: SpoolError.self) { try await spool.append(record(1, size: 4000)) }
        try await spool.append(record(2))
        let segment = try #require(fileSystem.files(in: "/spool").first { $0.hasSuffix(".spool") })
        #expect(fileSystem.contents(segment) == RecordFormat.frame(record(0)) + RecordFormat.frame(record(2)), "the failed write was cut off")
        #expect(await spool.lease(maxRecords: 10).map(\.payload) == [record(0), record(2)])

        fileSystem.kill()
        let reopened = simulatedSpool(fileSystem)
        #expect(reopened.corruptSpans == 0)
        #expect(await reopened.lease(maxRecords: 10).map(\.payload) == [record(0), record(2)])
    }

    @Test func aSegmentThatCannotBeCutBackTakesNoMoreAppends() async throws {
        let fileSystem = SimulatedFileSystem(seed: 7)
        let spool = simulatedSpool(fileSystem)
        try await spool.append(record(0))
        fileSystem.failNext(.write)
        fileSystem.failNext(.truncate)
        await #expect(throws: SpoolError.self) { try await spool.append(record(1, size: 4000)) }
        try await spool.append(record(2))
        let segments = fileSystem.files(in: "/spool").filter { $0.hasSuffix(".spool") }
        #expect(segments.count == 2, "record 2 went to a new segment, not after unknown bytes")
        #expect(await spool.lease(maxRecords: 10).map(\.payload) == [record(0), record(2)])

        fileSystem.crash()
        let reopened = simulatedSpool(fileSystem)
        #expect(await reopened.lease(maxRecords: 10).map(\.payload) == [record(0), record(2)])
    }

    @Test func aFailedFsyncFailsItsAppendsAndStartsANewSegment() async throws {
        let fileSystem = SimulatedFileSystem(seed: 3)
        let spool = simulatedSpool(fileSystem)
        try await spool.append(record(0))
        fileSystem.failNext(.fileSync)
        await #expect(throws: SpoolError.unwritable("fsync failed: \(SpoolErrno(EIO))")) { try await spool.append(record(1)) }
        try await spool.append(record(2))
        #expect(fileSystem.files(in: "/spool").filter { $0.hasSuffix(".spool") }.count == 2)
        // Record 1 was answered as failed but its bytes are readable: forwarded anyway (at least once).
        #expect(await spool.lease(maxRecords: 10).map(\.payload) == [record(0), record(1), record(2)])
        fileSystem.crash()
        let reopened = simulatedSpool(fileSystem)
        let recovered = await reopened.lease(maxRecords: 10).map(\.payload)
        #expect(recovered.contains(record(0)) && recovered.contains(record(2)))
    }

    @Test func aGroupAcrossSegmentsSyncsEachAndOnlyFailsWhereTheSyncFailed() async throws {
        let fileSystem = SimulatedFileSystem(seed: 5)
        let spool = simulatedSpool(fileSystem, segmentBytes: 300)
        // Three records of 116 bytes: two fit a 300-byte segment, the third starts another.
        fileSystem.failNext(.fileSync)  // the first segment's sync
        let results = await spool.appendGroup([record(0), record(1), record(2)])
        #expect(results.map { (try? $0.get()) != nil } == [false, false, true])
        fileSystem.crash()
        let reopened = simulatedSpool(fileSystem)
        #expect(await reopened.lease(maxRecords: 10).map(\.payload).contains(record(2)))
    }

    @Test func createdAndDeletedSegmentsSurviveACrashAsTheyWere() async throws {
        let fileSystem = SimulatedFileSystem(seed: 11)
        let spool = simulatedSpool(fileSystem, segmentBytes: 300)
        for index in 0..<4 { try await spool.append(record(index)) }  // two segments
        let first = await spool.lease(maxRecords: 2)
        await spool.acknowledge(first.map(\.id))  // the first segment is deleted
        fileSystem.crash()
        let reopened = simulatedSpool(fileSystem)
        #expect(await reopened.lease(maxRecords: 10).map(\.payload) == [record(2), record(3)], "created: kept; deleted: stays deleted")
    }

    @Test func aFailedDirectorySyncOnCreationFailsTheAppend() async throws {
        let fileSystem = SimulatedFileSystem(seed: 13)
        let spool = simulatedSpool(fileSystem)
        fileSystem.failNext(.directorySync)
        await #expect(throws: SpoolError.self) { try await spool.append(record(0)) }
        try await spool.append(record(1))
        fileSystem.crash()
        let reopened = simulatedSpool(fileSystem)
        #expect(await reopened.lease(maxRecords: 10).map(\.payload) == [record(1)])
    }

    @Test func aRecordWhoseBytesChangedIsNeverHandedOutNorDeleted() async throws {
        let fileSystem = SimulatedFileSystem(seed: 17)
        let spool = simulatedSpool(fileSystem)
        for index in 0..<3 { try await spool.append(record(index)) }
        let segment = try #require(fileSystem.files(in: "/spool").first { $0.hasSuffix(".spool") })
        var bytes = try #require(fileSystem.contents(segment))
        bytes.insert(0x20, at: RecordFormat.frame(record(0)).count + 3)  // shifts every later byte: misaligned
        fileSystem.setContents(segment, bytes)
        let leased = await spool.lease(maxRecords: 10)
        #expect(leased.map(\.payload) == [record(0)])
        #expect(spool.depth.records == 3, "the unreadable records stay counted")
        await spool.acknowledge(leased.map(\.id))
        #expect(fileSystem.contents(segment) != nil, "a segment holding unforwarded records is not deleted")
    }

    @Test func aRecordLargerThanTheFormatAllowsIsRefusedAtAppend() async throws {
        let fileSystem = SimulatedFileSystem(seed: 19)
        let spool = simulatedSpool(fileSystem, maxBytes: 1 << 40, segmentBytes: 1 << 40)
        let huge = [UInt8](repeating: 0x61, count: RecordFormat.maximumPayload + 1)
        await #expect(throws: SpoolError.recordTooLarge(bytes: huge.count, limit: RecordFormat.maximumPayload)) {
            try await spool.append(huge)
        }
        #expect(spool.depth == SpoolDepth(records: 0, bytes: 0))
        #expect(fileSystem.files(in: "/spool").filter { $0.hasSuffix(".spool") }.isEmpty, "nothing was written")
    }

    /// A lock just let go can be held for a moment longer (a child being spawned holds a copy of
    /// the descriptor until its exec): the spool tries again briefly before it gives up.
    @Test func aLockHeldForAMomentIsWaitedForAndOneHeldLongerIsNot() async throws {
        let briefly = SimulatedFileSystem(seed: 29)
        briefly.refuseLock(times: DurableSpool.lockAttempts - 1)
        let spool = simulatedSpool(briefly)
        #expect(!spool.isLockedByAnotherProcess)
        try await spool.append(record(0))

        let longer = SimulatedFileSystem(seed: 31)
        longer.refuseLock(times: DurableSpool.lockAttempts)
        #expect(simulatedSpool(longer).isLockedByAnotherProcess)
    }

    @Test func aSecondSpoolOnTheSameDirectoryIsRefusedAndTouchesNothing() async throws {
        let fileSystem = SimulatedFileSystem(seed: 23)
        let first = simulatedSpool(fileSystem)
        try await first.append(record(0))
        let second = simulatedSpool(fileSystem)
        #expect(second.isLockedByAnotherProcess)
        #expect(second.unavailableReason?.contains("in use by another tc-bridge process") == true)
        await #expect(throws: SpoolError.self) { try await second.append(record(1)) }
        #expect(await second.lease(maxRecords: 10).isEmpty)
        #expect(await first.lease(maxRecords: 10).map(\.payload) == [record(0)])
        await first.close()
        let third = simulatedSpool(fileSystem)
        #expect(!third.isLockedByAnotherProcess)
        #expect(await third.lease(maxRecords: 10).map(\.payload) == [record(0)])
    }
}

/// The same properties on the real file system.
@Suite struct SpoolPOSIXFaultTests {
    let directory = NSTemporaryDirectory() + "spool-fault-tests-\(UUID().uuidString)"

    func spool() -> DurableSpool {
        var logger = Logger(label: "spool-tests")
        logger.logLevel = .critical
        return DurableSpool(configuration: .init(directory: directory), logger: logger)
    }

    @Test func aRecordDamagedOnDiskIsNotForwardedAndItsSegmentIsKept() async throws {
        let spool = spool()
        for index in 0..<3 { try await spool.append(record(index)) }
        let name = try #require(try FileManager.default.contentsOfDirectory(atPath: directory).first { $0.hasSuffix(".spool") })
        let handle = try #require(FileHandle(forUpdatingAtPath: directory + "/" + name))
        try handle.seek(toOffset: UInt64(RecordFormat.frame(record(0)).count + RecordFormat.headerSize + 2))
        try handle.write(contentsOf: [0x00])  // a payload byte of record 1
        try handle.close()
        let leased = await spool.lease(maxRecords: 10)
        #expect(leased.map(\.payload) == [record(0), record(2)])
        await spool.acknowledge(leased.map(\.id))
        #expect(FileManager.default.fileExists(atPath: directory + "/" + name))
        #expect(spool.depth.records == 1)
    }

    @Test func twoSpoolsInOneProcessConflictOnTheLock() async throws {
        let first = spool()
        try await first.append(record(0))
        let second = spool()
        #expect(second.isLockedByAnotherProcess)
        #expect(second.unavailableReason?.contains(directory + "/lock") == true)
        await first.close()
        let third = spool()
        #expect(third.unavailableReason == nil)
        #expect(await third.lease(maxRecords: 10).map(\.payload) == [record(0)])
    }

    @Test func aLockHeldByAnotherProcessRefusesTheSpool() async throws {
        try FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true)
        let holder = try await holdLockInAnotherProcess(directory + "/lock")
        let refused = spool()
        #expect(refused.isLockedByAnotherProcess)
        try await releaseLock(holder, path: directory + "/lock")
        #expect(!spool().isLockedByAnotherProcess)
    }
}

/// Holds `flock` on `path` in another process (`flock -o`, so the lock is the flock process's own and
/// dies with it) and returns once it is held. Stop it with ``releaseLock(_:)``. Never blocks a thread.
func holdLockInAnotherProcess(_ path: String) async throws -> Process {
    let holder = Process()
    holder.executableURL = URL(fileURLWithPath: "/usr/bin/flock")
    // The command only waits for flock (its parent) to go, so nothing outlives the holder for long.
    holder.arguments = ["-o", path, "-c", "echo locked; while kill -0 $PPID 2>/dev/null; do sleep 0.2; done"]
    let output = Pipe()
    holder.standardOutput = output
    holder.standardInput = FileHandle.nullDevice
    let said = Mutex("")
    output.fileHandleForReading.readabilityHandler = { handle in
        let data = handle.availableData
        if data.isEmpty { handle.readabilityHandler = nil } else { said.withLock { $0 += String(decoding: data, as: UTF8.self) } }
    }
    try holder.run()
    try await pollUntil("flock to hold \(path)") { said.withLock { $0.contains("locked") } }
    return holder
}

/// Kills the lock holder and waits until its lock on `path` is gone.
func releaseLock(_ holder: Process, path: String) async throws {
    kill(holder.processIdentifier, SIGKILL)
    try await pollUntil("the lock on \(path) to go") { lockIsFree(path) }
}

/// Whether `flock(LOCK_EX | LOCK_NB)` on `path` succeeds now (released again at once).
func lockIsFree(_ path: String) -> Bool {
    let descriptor = open(path, O_RDWR | O_CLOEXEC)
    guard descriptor >= 0 else { return false }
    defer { close(descriptor) }
    return flock(descriptor, LOCK_EX | LOCK_NB) == 0
}

struct ConditionTimedOut: Error { let what: String }

/// Checks `condition` every 10 ms until it holds, for at most `timeout`.
func pollUntil(_ what: String, timeout: Duration = .seconds(30), _ condition: () -> Bool) async throws {
    let deadline = ContinuousClock.now.advanced(by: timeout)
    while !condition() {
        guard ContinuousClock.now < deadline else { throw ConditionTimedOut(what: what) }
        try await Task.sleep(for: .milliseconds(10))
    }
}
