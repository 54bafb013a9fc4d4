import AMQPClient
import DequeModule
import Foundation
import TCBridge

/// Answers each waiter a fixed time after it arrived, from one thread of its own, the way the
/// publisher's owner thread answers calls when the broker's confirms arrive: a stand-in for the
/// broker in `http-floor`, so the framework alone and the bridge without AMQP can be measured at
/// the request rate and concurrency the broker's confirm latency gives the real bridge.
/// Thread-safe.
final class DelayedAnswers: @unchecked Sendable {
    // @unchecked: `waiting` is only touched with `condition` locked.
    private let condition = NSCondition()
    private var waiting: Deque<(due: ContinuousClock.Instant, continuation: CheckedContinuation<Void, Never>)> = []
    private let delay: Duration

    init(delay: Duration) {
        self.delay = delay
        let thread = Thread { [self] in run() }
        thread.name = "delayed-answers"
        thread.start()
    }

    /// Returns `delay` after it was called.
    func wait() async {
        await withCheckedContinuation { continuation in
            condition.lock()
            waiting.append((ContinuousClock.now.advanced(by: delay), continuation))
            if waiting.count == 1 { condition.signal() }
            condition.unlock()
        }
    }

    private func run() {
        condition.lock()
        while true {
            guard let first = waiting.first else {
                condition.wait()
                continue
            }
            let now = ContinuousClock.now
            if first.due > now {
                let (seconds, attoseconds) = (first.due - now).components
                _ = condition.wait(until: Date(timeIntervalSinceNow: Double(seconds) + Double(attoseconds) / 1e18))
                continue
            }
            var due: [CheckedContinuation<Void, Never>] = []
            while let next = waiting.first, next.due <= now { due.append(waiting.removeFirst().continuation) }
            condition.unlock()
            for continuation in due { continuation.resume() }
            condition.lock()
        }
    }
}

/// The bridge's publisher with the broker replaced by ``DelayedAnswers``: every call "confirmed"
/// after the delay, nothing sent anywhere.
struct DelayedPublisher: EventPublishing {
    let answers: DelayedAnswers

    func publish(_ messages: [AMQPOutboundMessage]) async throws(AMQPError) {
        await answers.wait()
    }

    var state: AMQPConnectionState { .connected }
}
