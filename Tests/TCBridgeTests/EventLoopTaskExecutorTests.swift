import Foundation
import NIOCore
import NIOPosix
import Testing

@testable import TCBridge

@Suite("EventLoopTaskExecutor")
struct EventLoopTaskExecutorTests {
    /// The case it exists for: a continuation resumed by a thread that is not an event loop (the
    /// publisher's owner thread) continues on the preferred loop, not wherever the global executor puts it.
    @Test func aTaskResumedFromAForeignThreadContinuesOnItsLoop() async throws {
        let group = MultiThreadedEventLoopGroup(numberOfThreads: 2)
        for loop in [group.next(), group.next()] {
            let executor = EventLoopTaskExecutor(loop: loop)
            let onLoop: [Bool] = await withTaskExecutorPreference(executor) {
                var seen: [Bool] = [loop.inEventLoop]
                for _ in 0..<20 {
                    await withCheckedContinuation { (continuation: CheckedContinuation<Void, Never>) in
                        Thread.detachNewThread { continuation.resume() }
                    }
                    seen.append(loop.inEventLoop)
                }
                return seen
            }
            #expect(onLoop.count == 21)
            #expect(onLoop.allSatisfy { $0 }, "resumed off the loop: \(onLoop)")
        }
        try await group.shutdownGracefully()
    }

    @Test func jobsRunInTheOrderTheyWereEnqueued() async throws {
        let group = MultiThreadedEventLoopGroup(numberOfThreads: 1)
        let executor = EventLoopTaskExecutor(loop: group.next())
        let order = await withTaskExecutorPreference(executor) {
            await withTaskGroup(of: Int.self) { tasks in
                for index in 0..<50 { tasks.addTask { index } }
                var finished: [Int] = []
                for await index in tasks { finished.append(index) }
                return finished
            }
        }
        #expect(order == Array(0..<50))
        try await group.shutdownGracefully()
    }
}
