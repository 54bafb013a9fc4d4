import DequeModule
import Synchronization

/// Remembers the SHA-256 of every body answered 2xx for a time window, with bounded memory, so a
/// sender retry of identical bytes is answered 200 without publishing again.
///
/// A body being handled right now is "claimed": an identical request arriving meanwhile waits for
/// the first one's outcome instead of racing it (if the first fails, the second proceeds).
/// Thread-safe.
public final class DedupWindow: Sendable {
    public enum Claim: Sendable {
        /// Not seen within the window: handle it, then call ``DedupWindow/complete(_:accepted:)``.
        case new
        /// Answered 2xx within the window: answer 200, publish nothing.
        case duplicate
    }

    private struct State {
        var accepted: [String: ContinuousClock.Instant] = [:]
        var order: Deque<(digest: String, at: ContinuousClock.Instant)> = []
        var inProgress: [String: [CheckedContinuation<Void, Never>]] = [:]
    }

    public let window: Duration
    public let maxEntries: Int
    private let now: @Sendable () -> ContinuousClock.Instant
    private let state = Mutex(State())

    public init(window: Duration, maxEntries: Int = 100_000, now: @escaping @Sendable () -> ContinuousClock.Instant = { .now }) {
        self.window = window
        self.maxEntries = maxEntries
        self.now = now
    }

    /// Requests waiting on an in-progress claim of `digest` (for tests and diagnostics).
    func waitingCount(_ digest: String) -> Int { state.withLock { $0.inProgress[digest]?.count ?? 0 } }

    /// Entries currently remembered.
    public var count: Int { state.withLock { $0.accepted.count } }

    public func claim(_ digest: String) async -> Claim {
        while true {
            enum Step { case proceed(Claim), wait }
            let step: Step = state.withLock { state in
                expire(&state)
                if state.accepted[digest] != nil { return .proceed(.duplicate) }
                if state.inProgress[digest] != nil { return .wait }
                state.inProgress[digest] = []
                return .proceed(.new)
            }
            switch step {
            case .proceed(let claim): return claim
            case .wait:
                await withCheckedContinuation { continuation in
                    let registered = state.withLock { state in
                        guard state.inProgress[digest] != nil else { return false }
                        state.inProgress[digest]!.append(continuation)
                        return true
                    }
                    if !registered { continuation.resume() }
                }
            }
        }
    }

    /// Ends a ``Claim/new`` claim. `accepted`: the body was answered 2xx and is remembered.
    public func complete(_ digest: String, accepted: Bool) {
        let waiters = state.withLock { state in
            if accepted {
                let at = now()
                state.accepted[digest] = at
                state.order.append((digest, at))
                while state.order.count > maxEntries, let oldest = state.order.popFirst() {
                    if state.accepted[oldest.digest] == oldest.at { state.accepted[oldest.digest] = nil }
                }
            }
            return state.inProgress.removeValue(forKey: digest) ?? []
        }
        for waiter in waiters { waiter.resume() }
    }

    private func expire(_ state: inout State) {
        let cutoff = now() - window
        while let oldest = state.order.first, oldest.at <= cutoff {
            state.order.removeFirst()
            if state.accepted[oldest.digest] == oldest.at { state.accepted[oldest.digest] = nil }
        }
    }
}
