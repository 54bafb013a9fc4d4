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

    @Test func aStuckSinkDropsLinesBeyondTheLimitAndSaysHowManyOnceItMoves() {
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
        entered.wait()
        func line(_ index: Int) -> String { "line \(index < 10 ? "0" : "")\(index)" }
        for index in 0..<30 { output.write(line(index) + "\n") }  // 8 bytes each: 12 fit in 100
        release.signal()
        output.flush(timeout: .seconds(30))
        let lines = sink.lines
        #expect(lines.first == "first")
        #expect(lines.contains("tc-bridge: 18 log lines dropped (standard error too slow)"))
        #expect(lines.filter { $0.hasPrefix("line ") }.map(String.init) == (0..<12).map(line))
    }
}
