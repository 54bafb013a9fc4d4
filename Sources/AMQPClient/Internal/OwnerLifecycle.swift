import ServiceLifecycle
import Synchronization

/// The `Service.run()` half of a connection owner: started once, then waits until the owner
/// thread reports it has finished, asking it to stop on graceful shutdown or cancellation.
/// Thread-safe.
final class OwnerLifecycle: Sendable {
    private let state = Mutex<(started: Bool, finished: Bool, waiter: CheckedContinuation<Void, Never>?)>((false, false, nil))

    /// Records the start; a second start is a programming error.
    func markStarted(_ owner: String) {
        let alreadyStarted = state.withLock { state in
            defer { state.started = true }
            return state.started
        }
        precondition(!alreadyStarted, "\(owner).run() called twice")
    }

    var isFinished: Bool { state.withLock { $0.finished } }

    /// Called by the owner thread when it has closed its connection for good.
    func finish() {
        let waiter = state.withLock { state in
            state.finished = true
            defer { state.waiter = nil }
            return state.waiter
        }
        waiter?.resume()
    }

    /// Returns once ``finish()`` was called; calls `stop` on graceful shutdown or task cancellation.
    func waitUntilFinished(stop: @escaping @Sendable () -> Void) async {
        await withTaskCancellationHandler {
            await withGracefulShutdownHandler {
                await withCheckedContinuation { (continuation: CheckedContinuation<Void, Never>) in
                    let done = state.withLock { state in
                        if state.finished { return true }
                        state.waiter = continuation
                        return false
                    }
                    if done { continuation.resume() }
                }
            } onGracefulShutdown: {
                stop()
            }
        } onCancel: {
            stop()
        }
    }
}
