import Logging
import Synchronization

/// Frees an owner thread stuck in a socket write. rabbitmq-c 0.11 can block for ever in a write
/// when the broker stops reading (resource alarm, half-dead peer): if one write lasts longer than
/// the limit, the socket is shut down, the write fails, and the owner reconnects.
///
/// The owner thread brackets each write with ``begin(socket:)`` and ``end()``; ``run(limit:logger:)``
/// watches from a task. Thread-safe.
final class WriteWatchdog: Sendable {
    private let writing = Mutex<(since: ContinuousClock.Instant?, socket: Int32)>((nil, -1))

    func begin(socket: Int32) { writing.withLock { $0 = (.now, socket) } }

    func end() { writing.withLock { $0.since = nil } }

    /// Checks four times a second until the task is cancelled.
    func run(limit: Duration, logger: Logger) async {
        while !Task.isCancelled {
            try? await Task.sleep(for: .milliseconds(250))
            // Aborted under the lock: the write's `end()` waits for it, so the descriptor cannot
            // be closed and reused by a new connection in between.
            let aborted: Bool = writing.withLock { writing in
                guard let since = writing.since, ContinuousClock.now - since > limit, writing.socket >= 0 else { return false }
                writing.since = nil
                AMQPConnection.abortSocket(fileDescriptor: writing.socket)
                return true
            }
            if aborted { logger.warning("socket write stalled; aborting the connection", metadata: ["limit": "\(limit)"]) }
        }
    }
}
