import DurationUnits
import Foundation
import Logging
import Synchronization
import TCBridge

/// Bounds a graceful shutdown. Once SIGTERM or SIGINT arrives, a thread of its own waits `limit`;
/// if the process is still running then, it logs that and exits with status 70 (`EX_SOFTWARE`).
///
/// Nothing accepted is lost by that: an event is answered 2xx only once the broker confirmed it or
/// the spool holds it, and a request still open gets no answer, so the sender retries it. What it
/// guards against is a shutdown that never ends. One is known with tracing on: swift-otel's batch
/// span processor uses swift-async-algorithms' `merge`, whose lock can be left held on Swift 6.0–6.3
/// (apple/swift-async-algorithms#430), leaving an event loop blocked for ever.
///
/// Nothing here runs on a Swift concurrency executor (which is NIO's event loops in `tc-bridge`):
/// the signals are caught by Dispatch sources on a queue of their own, and the thread is started at
/// ``arm(limit:logger:)``, waiting for them. So event loops blocked for ever cannot stop it. The
/// sources stay registered until the process exits, so a shutdown that hangs after the service
/// group has returned is still ended by a signal.
///
/// A signal that arrives after `arm` but before the service group traps it starts the deadline
/// only: start-up is not interrupted, and the process exits 70 once `limit` has passed.
enum ShutdownDeadline {
    /// The exit status of a shutdown that ran out of time.
    static let exitStatus: Int32 = 70

    /// Starts watching for SIGTERM and SIGINT, and returns once Dispatch listens for them. Call
    /// once, before the service group traps them (it adds sources of its own: Dispatch hands each
    /// signal to every source).
    static func arm(limit: Duration, logger: Logger) {
        let caught = Mutex<Int32?>(nil)
        let fired = DispatchSemaphore(value: 0)
        let registered = DispatchSemaphore(value: 0)
        let queue = DispatchQueue(label: "tc-bridge.shutdown-deadline")
        let signals = [SIGTERM, SIGINT]
        let sources = SignalSources(
            signals.map { number -> any DispatchSourceSignal in
                #if canImport(Darwin)
                // Darwin delivers to the source (kqueue) only a signal whose action is not to exit;
                // Linux's libdispatch takes the signal over itself when it registers the source.
                signal(number, SIG_IGN)
                #endif
                let source = DispatchSource.makeSignalSource(signal: number, queue: queue)
                source.setEventHandler {
                    let first = caught.withLock { earlier in
                        defer { earlier = earlier ?? number }
                        return earlier == nil
                    }
                    if first { fired.signal() }
                }
                source.setRegistrationHandler { registered.signal() }
                source.resume()
                return source
            })
        // Registration is asynchronous: a signal before it would get the default action (exit at once).
        for _ in signals { registered.wait() }
        let thread = Thread {
            withExtendedLifetime(sources) { fired.wait() }
            let name = caught.withLock { $0 } == SIGINT ? "SIGINT" : "SIGTERM"
            // Foundation's sleep resumes after a signal interrupts it.
            Thread.sleep(forTimeInterval: limit.secondsValue)
            logger.critical(
                "graceful shutdown did not finish in time; exiting",
                metadata: ["signal": "\(name)", "limit_seconds": "\(limit.secondsValue)"])
            BridgeLogHandler.flush()
            // `_exit`: no atexit handlers or library destructors racing threads still running.
            _exit(exitStatus)
        }
        thread.name = "shutdown-deadline"
        thread.start()
    }
}

/// Keeps the signal sources alive for the thread that waits on them.
/// @unchecked: the sources are only retained, never touched, after registration.
private final class SignalSources: @unchecked Sendable {
    let sources: [any DispatchSourceSignal]
    init(_ sources: [any DispatchSourceSignal]) { self.sources = sources }
}
