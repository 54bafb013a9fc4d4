import DurationUnits
import Foundation
import Logging
import TCBridge
import UnixSignals

/// Bounds a graceful shutdown. Once SIGTERM or SIGINT arrives, a thread of its own waits `limit`;
/// if the process is still running then, it logs that and exits with status 70 (`EX_SOFTWARE`).
///
/// Nothing accepted is lost by that: an event is answered 2xx only once the broker confirmed it or
/// the spool holds it, and a request still open gets no answer, so the sender retries it. What it
/// guards against is a shutdown that never ends. One is known with tracing on: swift-otel's batch
/// span processor uses swift-async-algorithms' `merge`, whose lock can be left held on Swift 6.0–6.3
/// (apple/swift-async-algorithms#430), leaving an event loop blocked for ever. The thread does not
/// depend on any executor, so a blocked event loop cannot stop it.
enum ShutdownDeadline {
    /// The exit status of a shutdown that ran out of time.
    static let exitStatus: Int32 = 70

    /// Starts watching for the signals. Call once, before the service group traps them.
    static func arm(limit: Duration, logger: Logger) async -> Task<Void, Never> {
        let signals = await UnixSignalsSequence(trapping: .sigterm, .sigint)
        return Task {
            for await signal in signals {
                let thread = Thread {
                    // Foundation's sleep resumes after a signal interrupts it.
                    Thread.sleep(forTimeInterval: limit.secondsValue)
                    logger.critical(
                        "graceful shutdown did not finish in time; exiting",
                        metadata: ["signal": "\(signal)", "limit_seconds": "\(limit.secondsValue)"])
                    BridgeLogHandler.flush()
                    // `_exit`: no atexit handlers or library destructors racing threads still running.
                    _exit(exitStatus)
                }
                thread.name = "shutdown-deadline"
                thread.start()
                return
            }
        }
    }
}
