import Synchronization

/// The answer to one caller waiting in a continuation, given exactly once by whichever comes first
/// (the owner thread, or the caller's backstop); an answer given before the continuation is
/// installed is kept for it. Thread-safe.
final class OnceAnswer: Sendable {
    private let state = Mutex<(continuation: CheckedContinuation<Result<Void, AMQPError>, Never>?, early: Result<Void, AMQPError>?, done: Bool)>((nil, nil, false))

    func install(_ continuation: CheckedContinuation<Result<Void, AMQPError>, Never>) {
        let early: Result<Void, AMQPError>? = state.withLock { state in
            if let early = state.early {
                state.early = nil
                return early
            }
            state.continuation = continuation
            return nil
        }
        if let early { continuation.resume(returning: early) }
    }

    /// `true` once the caller has its answer.
    var isResolved: Bool { state.withLock { $0.done } }

    /// Answers the caller; later calls are ignored.
    func resume(_ result: Result<Void, AMQPError>) {
        let continuation: CheckedContinuation<Result<Void, AMQPError>, Never>? = state.withLock { state in
            guard !state.done else { return nil }
            state.done = true
            if let continuation = state.continuation {
                state.continuation = nil
                return continuation
            }
            state.early = result
            return nil
        }
        continuation?.resume(returning: result)
    }
}
