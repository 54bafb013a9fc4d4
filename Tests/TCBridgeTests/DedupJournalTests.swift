import AMQPClient
import Dispatch
import Foundation
import HTTPTypes
import Hummingbird
import HummingbirdTesting
import Logging
import NIOCore
import Synchronization
@testable import TCBridge
import TestSupport
import Testing
import TutorCruncher

// The persistent dedup window: its journal file, reopened, torn, expired, compacted.

@Suite struct DedupJournalTests {
    let directory = NSTemporaryDirectory() + "dedup-journal-\(UUID().uuidString)"
    var path: String { directory + "/dedup.log" }
    let clock = DedupWindowTests.FakeClock()

    init() throws {
        try FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true)
    }

    func open(window: Duration = .seconds(3600), maxEntries: Int = 100_000, compactionMinimum: Int = 1024) throws -> DedupWindow {
        var logger = Logger(label: "dedup-tests")
        logger.logLevel = .critical
        return try DedupWindow(
            window: window, maxEntries: maxEntries, journalPath: path, compactionMinimum: compactionMinimum, logger: logger, now: clock.read)
    }

    func accept(_ window: DedupWindow, _ names: [String]) async {
        for name in names {
            let digest = DedupWindowTests.digest(name)
            #expect(await window.claim(digest) == .new)
            await window.complete(digest, accepted: true)
        }
    }

    var fileSize: Int { (try? FileManager.default.attributesOfItem(atPath: path)[.size] as? Int) ?? -1 }

    @Test func survivesReopening() async throws {
        let first = try open()
        await accept(first, ["a", "b"])
        #expect(fileSize == 8 + 2 * 44)
        let refused = DedupWindowTests.digest("refused")
        _ = await first.claim(refused)
        await first.complete(refused, accepted: false)

        let second = try open()
        #expect(second.count == 2)
        #expect(await second.claim(DedupWindowTests.digest("a")) == .duplicate)
        #expect(await second.claim(DedupWindowTests.digest("b")) == .duplicate)
        #expect(await second.claim(refused) == .new)
        let attributes = try FileManager.default.attributesOfItem(atPath: path)
        #expect((attributes[.posixPermissions] as? Int) == 0o600)
    }

    @Test func aTornTailIsIgnoredAndCutOff() async throws {
        await accept(try open(), ["a", "b"])
        let handle = try #require(FileHandle(forWritingAtPath: path))
        handle.seekToEndOfFile()
        handle.write(Data(DedupWindowTests.digest("c").bytes.prefix(20)))  // a crash mid-append
        handle.closeFile()

        let reopened = try open()
        #expect(reopened.count == 2)
        #expect(fileSize == 8 + 2 * 44)
        await accept(reopened, ["d"])
        let again = try open()
        #expect(again.count == 3)
        #expect(await again.claim(DedupWindowTests.digest("d")) == .duplicate)
        #expect(await again.claim(DedupWindowTests.digest("c")) == .new)
    }

    @Test func aDamagedRecordIsSkippedAndTheRestKept() async throws {
        await accept(try open(), ["a", "b"])
        var bytes = Array(try Data(contentsOf: URL(fileURLWithPath: path)))
        bytes[8 + 3] ^= 0x40
        try Data(bytes).write(to: URL(fileURLWithPath: path))
        let reopened = try open()
        #expect(await reopened.claim(DedupWindowTests.digest("a")) == .new)
        #expect(await reopened.claim(DedupWindowTests.digest("b")) == .duplicate)
    }

    @Test func expiredEntriesAreDroppedOnLoad() async throws {
        await accept(try open(window: .seconds(60)), ["old"])
        clock.advance(.seconds(30))
        await accept(try open(window: .seconds(60)), ["young"])
        clock.advance(.seconds(31))
        let reopened = try open(window: .seconds(60))
        #expect(reopened.count == 1)
        #expect(await reopened.claim(DedupWindowTests.digest("old")) == .new)
        #expect(await reopened.claim(DedupWindowTests.digest("young")) == .duplicate)
    }

    @Test func compactsOnceMostRecordsAreDead() async throws {
        let window = try open(window: .seconds(60), compactionMinimum: 8)
        await accept(window, (0..<10).map { "early-\($0)" })
        #expect(window.journalRecords == 10)
        await window.journal?.idle()  // the last flush's compaction check has run (nothing to do yet)
        clock.advance(.seconds(61))
        await accept(window, ["late"])  // 11 records, 1 live: rewritten with the live one
        try await waitUntil("compaction after the flush") { window.journalRecords == 1 }
        #expect(fileSize == 8 + 44)
        #expect(!FileManager.default.fileExists(atPath: path + ".tmp"))
        await accept(window, ["later"])  // appends go to the new file
        let reopened = try open(window: .seconds(60), compactionMinimum: 8)
        #expect(reopened.count == 2)
        #expect(await reopened.claim(DedupWindowTests.digest("late")) == .duplicate)
        #expect(await reopened.claim(DedupWindowTests.digest("later")) == .duplicate)
        #expect(await reopened.claim(DedupWindowTests.digest("early-3")) == .new)
    }

    @Test func compactsOnLoadToo() async throws {
        let first = try open(window: .seconds(60), compactionMinimum: 4)
        await accept(first, (0..<6).map { "early-\($0)" })
        await first.journal?.idle()  // its last flush may still be checking whether to compact
        clock.advance(.seconds(61))
        let reopened = try open(window: .seconds(60), compactionMinimum: 4)
        #expect(reopened.journalRecords == 0)
        #expect(fileSize == 8)
    }

    @Test func loadKeepsTheNewestWhenOverTheLimit() async throws {
        let window = try open()
        for index in 0..<5 {
            await accept(window, ["entry-\(index)"])
            clock.advance(.seconds(1))
        }
        let reopened = try open(maxEntries: 3)
        #expect(reopened.count == 3)
        #expect(await reopened.claim(DedupWindowTests.digest("entry-4")) == .duplicate)
        #expect(await reopened.claim(DedupWindowTests.digest("entry-0")) == .new)
    }

    @Test func concurrentCompletionsShareOneFsync() async throws {
        let window = try open()
        let journal = try #require(window.journal)
        await accept(window, ["warm-up"])
        await journal.idle()
        let before = journal.syncCount
        // Hold the journal's queue (as a slow fsync would): completions still return, written.
        let queueHeld = DispatchSemaphore(value: 0)
        journal.queue.async { queueHeld.wait() }
        let count = 200
        await withTaskGroup(of: Void.self) { group in
            for index in 0..<count {
                group.addTask {
                    let digest = DedupWindowTests.digest("concurrent-\(index)")
                    _ = await window.claim(digest)
                    await window.complete(digest, accepted: true)
                }
            }
        }
        #expect(journal.unsyncedCount == count, "every completion wrote its record before returning")
        #expect(try open().count == count + 1, "written records are read back before any fsync")
        queueHeld.signal()
        await journal.idle()
        #expect(journal.syncCount == before + 1)
        #expect(journal.unsyncedCount == 0)
    }

    @Test func throughputWithManyConcurrentRequests() async throws {
        // Real fsyncs on the test machine's disk; prints the figures, asserts only that they batch.
        let window = try DedupWindow(
            window: .seconds(3600), journalPath: path, logger: Logger(label: "dedup-tests", factory: { _ in SwiftLogNoOpLogHandler() }))
        let workers = 64
        let perWorker = 40
        let start = ContinuousClock.now
        await withTaskGroup(of: Void.self) { group in
            for worker in 0..<workers {
                group.addTask {
                    for index in 0..<perWorker {
                        let digest = DedupWindowTests.digest("load-\(worker)-\(index)")
                        _ = await window.claim(digest)
                        await window.complete(digest, accepted: true)
                    }
                }
            }
        }
        let elapsed = ContinuousClock.now - start
        let count = workers * perWorker
        await window.journal?.idle()
        let syncs = try #require(window.journalSyncs)
        let seconds = Double(elapsed.components.seconds) + Double(elapsed.components.attoseconds) / 1e18
        print("dedup journal: \(count) completions from \(workers) concurrent tasks in \(elapsed), \(syncs) fsyncs, \(Int(Double(count) / seconds))/s")
        #expect(syncs < count)
        #expect(try open().count == count)
    }

    @Test func anIdenticalRequestIsNotAnsweredBeforeTheEntryIsWritten() async throws {
        let window = try open()
        let digest = DedupWindowTests.digest("x")
        #expect(await window.claim(digest) == .new)
        let second = Task { await window.claim(digest) }
        try await waitUntil("second request waiting") { window.waitingCount(digest) == 1 }
        await window.complete(digest, accepted: true)
        #expect(await second.value == .duplicate)
        #expect(fileSize == 8 + 44)
    }

    @Test func aForeignFileIsSetAsideNotTrusted() async throws {
        try Data("not a journal at all\n".utf8).write(to: URL(fileURLWithPath: path))
        let window = try open()
        #expect(window.count == 0)
        let aside = try FileManager.default.contentsOfDirectory(atPath: directory).filter { $0.hasPrefix("dedup.log.unreadable-") }
        #expect(aside.count == 1)
        await accept(window, ["a"])
        #expect(try open().count == 1)
    }

    @Test func anUnusableDirectoryThrows() {
        var logger = Logger(label: "dedup-tests")
        logger.logLevel = .critical
        #expect(throws: DedupJournalError.self) {
            _ = try DedupWindow(window: .seconds(60), journalPath: "/dev/null/dedup.log", logger: logger)
        }
    }
}
