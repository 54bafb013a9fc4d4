import Dispatch
import Synchronization
import Testing

@testable import TCBridge

/// The log writer: every line arrives, in order per logging thread, batched into few writes; a
/// stuck standard error drops lines beyond the limit and says how many once it moves again.
@Suite struct LogOutputTests {
    /// Collects what the writer hands over.
    final class Sink: Sendable {
        let batches = Mutex<[[UInt8]]>([])
        var lines: [Substring] {
            let text = String(decoding: batches.withLock { $0.joined() }, as: UTF8.self)
            return text.split(separator: "\n")
        }
        var writes: Int { batches.withLock { $0.count } }
        func take(_ batch: [UInt8]) { batches.withLock { $0.append(batch) } }
    }

    @Test func linesFromManyThreadsAllArriveInOrderPerThreadInFewWrites() {
        let sink = Sink()
        let output = LogOutput(sink: { sink.take($0) })
        let threads = 4, perThread = 500
        DispatchQueue.concurrentPerform(iterations: threads) { thread in
            for index in 0..<perThread { output.write("t\(thread) \(index)\n") }
        }
        output.flush(timeout: .seconds(30))
        let lines = sink.lines
        #expect(lines.count == threads * perThread)
        for thread in 0..<threads {
            let own = lines.filter { $0.hasPrefix("t\(thread) ") }.map { Int($0.split(separator: " ")[1]) }
            #expect(own == (0..<perThread).map { $0 }, "thread \(thread)'s lines in order")
        }
        // The writer takes what has queued and lingers between batches: far fewer writes than lines.
        #expect(sink.writes < threads * perThread / 2)
    }

    @Test func aStuckSinkDropsLinesBeyondTheLimitAndSaysHowManyOnceItMoves() throws {
        let sink = Sink()
        let entered = DispatchSemaphore(value: 0)
        let release = DispatchSemaphore(value: 0)
        let first = Atomic<Bool>(true)
        let output = LogOutput(
            sink: { batch in
                if first.exchange(false, ordering: .relaxed) {
                    entered.signal()
                    release.wait()  // standard error stops reading
                }
                sink.take(batch)
            }, maximumQueuedBytes: 100, linger: .zero)
        output.write("first\n")
        try #require(entered.wait(timeout: .now() + 30) == .success)
        func line(_ index: Int) -> String { "line \(index < 10 ? "0" : "")\(index)" }
        for index in 0..<30 { output.write(line(index) + "\n") }  // 8 bytes each: 12 fit in 100
        release.signal()
        output.flush(timeout: .seconds(30))
        let lines = sink.lines
        #expect(lines.first == "first")
        #expect(lines.contains("tc-bridge: 18 log lines dropped (standard error too slow)"))
        #expect(lines.filter { $0.hasPrefix("line ") }.map(String.init) == (0..<12).map(line))
    }

    /// A sink that stops on its first batch until released, and counts the batches it got.
    final class GatedSink: Sendable {
        let sink = Sink()
        let entered = DispatchSemaphore(value: 0)
        let release = DispatchSemaphore(value: 0)
        let batches = DispatchSemaphore(value: 0)
        private let first = Atomic<Bool>(true)
        func take(_ batch: [UInt8]) {
            if first.exchange(false, ordering: .relaxed) {
                entered.signal()
                release.wait()
            }
            sink.take(batch)
            batches.signal()
        }
    }

    @Test func linesQueuedWhileAWriteIsUnderwayGoOutInOneWrite() throws {
        let gated = GatedSink()
        let output = LogOutput(sink: { gated.take($0) })
        output.write("first\n")
        try #require(gated.entered.wait(timeout: .now() + 30) == .success)
        for index in 0..<100 { output.write("line \(index)\n") }
        gated.release.signal()
        output.flush(timeout: .seconds(30))
        #expect(gated.sink.writes == 2)
        #expect(gated.sink.lines.count == 101)
    }

    @Test func aLineLongerThanTheLimitIsWrittenWhenNothingElseWaits() {
        let sink = Sink()
        let output = LogOutput(sink: { sink.take($0) }, maximumQueuedBytes: 10)
        output.write("a line longer than ten bytes\n")
        output.flush(timeout: .seconds(30))
        #expect(sink.lines == ["a line longer than ten bytes"])
    }

    /// The writer lingers between batches; an error line does not wait for the linger to end.
    @Test func anUrgentLineEndsTheLinger() throws {
        let gated = GatedSink()
        gated.release.signal()  // the first batch passes
        let output = LogOutput(sink: { gated.take($0) }, linger: .seconds(300))
        output.write("first\n")
        try #require(gated.batches.wait(timeout: .now() + 30) == .success)
        output.write("routine\n")
        output.write("urgent\n", urgent: true)
        try #require(gated.batches.wait(timeout: .now() + 30) == .success, "the second batch came before the linger ended")
        #expect(gated.sink.lines == ["first", "routine", "urgent"])
    }
}
