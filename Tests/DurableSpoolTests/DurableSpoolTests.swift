@testable import DurableSpool
import Foundation
import Logging
import Testing

@Suite struct DurableSpoolTests {
    let directory = NSTemporaryDirectory() + "spool-tests-\(UUID().uuidString)"

    func spool(maxBytes: Int64 = 1 << 20, segmentBytes: Int64 = 64 << 10) -> DurableSpool {
        var logger = Logger(label: "spool-tests")
        logger.logLevel = .critical
        return DurableSpool(configuration: .init(directory: directory, maxBytes: maxBytes, segmentBytes: segmentBytes), logger: logger)
    }

    func payload(_ index: Int) -> [UInt8] { Array("record-\(index)-".utf8) + [UInt8](repeating: UInt8(index % 251), count: 100) }

    func segmentFiles() throws -> [String] {
        try FileManager.default.contentsOfDirectory(atPath: directory).filter { $0.hasSuffix(".spool") }.sorted()
    }

    @Test func appendedRecordsAreLeasedInOrderAndAcknowledgedAway() async throws {
        let spool = spool()
        for index in 0..<5 { try await spool.append(payload(index)) }
        #expect(spool.depth.records == 5)
        let first = await spool.lease(maxRecords: 3)
        #expect(first.map(\.payload) == (0..<3).map(payload))
        let rest = await spool.lease(maxRecords: 10)
        #expect(rest.map(\.payload) == (3..<5).map(payload))
        #expect(await spool.lease(maxRecords: 10).isEmpty, "leased records are not handed out twice")
        await spool.acknowledge((first + rest).map(\.id))
        #expect(spool.depth == SpoolDepth(records: 0, bytes: 0))
        #expect(try segmentFiles().isEmpty, "fully acknowledged segments are deleted")
    }

    @Test func releasedRecordsAreLeasedAgainFirst() async throws {
        let spool = spool()
        for index in 0..<3 { try await spool.append(payload(index)) }
        let leased = await spool.lease(maxRecords: 2)
        await spool.release(leased.map(\.id))
        #expect(await spool.lease(maxRecords: 3).map(\.payload) == (0..<3).map(payload))
    }

    @Test func unacknowledgedRecordsSurviveARestart() async throws {
        do {
            let spool = spool()
            for index in 0..<4 { try await spool.append(payload(index)) }
            let leased = await spool.lease(maxRecords: 1)
            await spool.acknowledge(leased.map(\.id))
            _ = await spool.lease(maxRecords: 1)  // leased but never acknowledged: a crash mid-forward
            await spool.close()
        }
        let reopened = spool()
        let recovered = await reopened.lease(maxRecords: 10)
        // The first record's segment still holds the others, so it may come back: at-least-once.
        #expect(Set(recovered.map(\.payload)).isSuperset(of: Set((1..<4).map(payload))))
        try await reopened.append(payload(9))
        #expect(await reopened.lease(maxRecords: 10).map(\.payload) == [payload(9)])
    }

    @Test func concurrentAppendsShareSyncs() async throws {
        let spool = spool()
        try await withThrowingTaskGroup(of: Void.self) { group in
            for index in 0..<300 { group.addTask { try await spool.append(self.payload(index)) } }
            try await group.waitForAll()
        }
        #expect(spool.depth.records == 300)
        #expect(spool.syncCount < 300, "group commit: \(spool.syncCount) syncs for 300 appends")
        #expect(Set(await spool.lease(maxRecords: 1000).map(\.payload)) == Set((0..<300).map(payload)))
    }

    @Test func segmentsRotateAndAreDeletedWhenDone() async throws {
        let spool = spool(segmentBytes: 1024)
        for index in 0..<30 { try await spool.append(payload(index)) }
        #expect(try segmentFiles().count > 1)
        let all = await spool.lease(maxRecords: 100)
        #expect(all.count == 30)
        await spool.acknowledge(all.map(\.id))
        #expect(try segmentFiles().isEmpty)
    }

    @Test func fullSpoolRefusesAppendsUntilSpaceIsFreed() async throws {
        let spool = spool(maxBytes: 600)
        var accepted = 0
        var refusal: SpoolError?
        for index in 0..<10 {
            do {
                try await spool.append(payload(index))
                accepted += 1
            } catch {
                refusal = error
                break
            }
        }
        #expect(accepted == 4)  // 4 × (16-byte header + 109-byte payload) = 500 ≤ 600 < 625
        #expect(refusal == .full(limit: 600))
        await spool.acknowledge(await spool.lease(maxRecords: 10).map(\.id))
        try await spool.append(payload(42))
    }

    @Test func unwritableDirectoryFailsAppendsClearly() async throws {
        var logger = Logger(label: "spool-tests")
        logger.logLevel = .critical
        let spool = DurableSpool(configuration: .init(directory: "/dev/null/spool"), logger: logger)
        #expect(spool.unavailableReason?.contains("/dev/null/spool") == true)
        await #expect(throws: SpoolError.self) { try await spool.append([1, 2, 3]) }
    }

    @Test func corruptRecordIsKeptAsideAndTheOthersRecovered() async throws {
        do {
            let spool = spool()
            for index in 0..<3 { try await spool.append(payload(index)) }
            await spool.close()
        }
        let file = directory + "/" + (try segmentFiles()[0])
        var bytes = Array(try Data(contentsOf: URL(fileURLWithPath: file)))
        let recordSize = RecordFormat.headerSize + payload(0).count
        bytes[recordSize + RecordFormat.headerSize + 3] ^= 0xFF  // a payload byte of the middle record
        try Data(bytes).write(to: URL(fileURLWithPath: file))

        let reopened = spool()
        #expect(reopened.corruptSpans == 1)
        #expect(await reopened.lease(maxRecords: 10).map(\.payload) == [payload(0), payload(2)])
        let kept = try FileManager.default.contentsOfDirectory(atPath: directory + "/corrupt")
        #expect(kept.count == 1)
        let keptBytes = try Data(contentsOf: URL(fileURLWithPath: directory + "/corrupt/" + kept[0]))
        #expect(keptBytes.count == recordSize)
    }

    /// Damages the first record of the spool's only segment (a payload byte).
    func damageFirstRecord() throws {
        let file = directory + "/" + (try segmentFiles()[0])
        var bytes = Array(try Data(contentsOf: URL(fileURLWithPath: file)))
        bytes[RecordFormat.headerSize + 3] ^= 0xFF
        try Data(bytes).write(to: URL(fileURLWithPath: file))
    }

    func keptAside() throws -> [String: [UInt8]] {
        let names = (try? FileManager.default.contentsOfDirectory(atPath: directory + "/corrupt")) ?? []
        var files: [String: [UInt8]] = [:]
        for name in names { files[name] = Array(try Data(contentsOf: URL(fileURLWithPath: directory + "/corrupt/" + name))) }
        return files
    }

    @Test func aSpanKeptAsideByAnEarlierRunIsNeverOverwritten() async throws {
        // Run 1 and 2: segment 1's first record is damaged, kept aside, the rest forwarded; the
        // spool empties, so the next run numbers its segments from 1 again.
        for run in 0..<2 {
            do {
                let spool = spool()
                for index in 0..<3 { try await spool.append(payload(10 * run + index)) }
                await spool.close()
            }
            try damageFirstRecord()
            let reopened = spool()
            let recovered = await reopened.lease(maxRecords: 10)
            #expect(recovered.map(\.payload) == [payload(10 * run + 1), payload(10 * run + 2)])
            await reopened.acknowledge(recovered.map(\.id))
            await reopened.close()
            #expect(try segmentFiles().isEmpty)
        }
        let kept = try keptAside()
        #expect(kept.count == 2, "\(kept.keys.sorted())")
        #expect(Set(kept.keys) == ["segment-1-offset-0.bin", "segment-1-offset-0-2.bin"])
        // Each holds its own run's record (damaged), not the other's.
        let first = try #require(kept["segment-1-offset-0.bin"])
        let second = try #require(kept["segment-1-offset-0-2.bin"])
        #expect(first != second)
        #expect(first.count == RecordFormat.headerSize + payload(0).count)
    }

    @Test func theSameDamagedSpanFoundAgainIsKeptOnce() async throws {
        do {
            let spool = spool()
            for index in 0..<3 { try await spool.append(payload(index)) }
            await spool.close()
        }
        try damageFirstRecord()
        // Each start finds the damage again (its segment still holds records nobody acknowledged).
        for _ in 0..<2 {
            let reopened = spool()
            #expect(reopened.corruptSpans == 1)
            await reopened.close()
        }
        #expect(try keptAside().keys.sorted() == ["segment-1-offset-0.bin"])
    }

    @Test func segmentNamesTheSpoolDidNotWriteAreLeftAlone() async throws {
        try FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true)
        // The largest sequence (counting on from it would overflow), and one spelled unpadded.
        for name in ["segment-18446744073709551615.spool", "segment-5.spool"] {
            try Data("not a segment".utf8).write(to: URL(fileURLWithPath: directory + "/" + name))
        }
        let spool = spool()
        #expect(spool.unavailableReason == nil)
        try await spool.append(payload(1))
        #expect(await spool.lease(maxRecords: 10).map(\.payload) == [payload(1)])
        #expect(try segmentFiles().sorted() == ["segment-000000000001.spool", "segment-18446744073709551615.spool", "segment-5.spool"])
        await spool.close()
    }

    @Test func damagedHeaderDoesNotBlockLaterRecords() async throws {
        do {
            let spool = spool()
            for index in 0..<3 { try await spool.append(payload(index)) }
            await spool.close()
        }
        let file = directory + "/" + (try segmentFiles()[0])
        var bytes = Array(try Data(contentsOf: URL(fileURLWithPath: file)))
        bytes[0] = 0x00  // first record's magic
        bytes[9] = 0x7F  // and its length
        try Data(bytes).write(to: URL(fileURLWithPath: file))
        let reopened = spool()
        #expect(reopened.corruptSpans == 1)
        #expect(await reopened.lease(maxRecords: 10).map(\.payload) == [payload(1), payload(2)])
    }

    @Test func tornTailFromACrashMidWriteIsSetAside() async throws {
        do {
            let spool = spool()
            for index in 0..<2 { try await spool.append(payload(index)) }
            await spool.close()
        }
        let file = directory + "/" + (try segmentFiles()[0])
        let bytes = Array(try Data(contentsOf: URL(fileURLWithPath: file)))
        try Data(bytes.dropLast(7)).write(to: URL(fileURLWithPath: file))
        let reopened = spool()
        #expect(reopened.corruptSpans == 1)
        #expect(await reopened.lease(maxRecords: 10).map(\.payload) == [payload(0)])
    }

    @Test func recordFramingRoundTrips() {
        let framed = RecordFormat.frame([1, 2, 3])
        framed.withUnsafeBytes { bytes in
            #expect(RecordFormat.parse(bytes, at: 0) == .record(payloadRange: 16..<19, end: 19))
        }
        #expect(CRC32.checksum(Array("123456789".utf8)) == 0xCBF4_3926)  // the standard check value
    }

    @Test func sliceBy8MatchesTheBytewiseDefinitionAtEveryLengthAndAlignment() {
        func reference(_ bytes: ArraySlice<UInt8>) -> UInt32 {
            var crc: UInt32 = 0xFFFF_FFFF
            for byte in bytes {
                crc ^= UInt32(byte)
                for _ in 0..<8 { crc = crc & 1 == 1 ? 0xEDB8_8320 ^ (crc >> 1) : crc >> 1 }
            }
            return crc ^ 0xFFFF_FFFF
        }
        var generator = SystemRandomNumberGenerator()
        let data = (0..<300).map { _ in UInt8.random(in: 0...255, using: &generator) }
        for start in 0..<9 {
            for length in 0..<(data.count - start) where length < 40 || length % 37 == 0 {
                let slice = data[start..<start + length]
                #expect(slice.withUnsafeBytes { CRC32.checksum($0) } == reference(slice), "start \(start) length \(length)")
            }
        }
    }
}
