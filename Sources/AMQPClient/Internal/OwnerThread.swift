import CRabbitMQ
import DurationUnits
import Synchronization

#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

/// Starts a dedicated OS thread for a connection owner, outside Swift's cooperative pool,
/// so blocking socket calls never starve async tasks.
enum OwnerThread {
    private final class Box {
        let name: String
        let body: () -> Void
        init(name: String, _ body: @escaping () -> Void) {
            self.name = name
            self.body = body
        }
        func setName() { tcb_set_current_thread_name(String(name.utf8.prefix(15))!) }
    }

    /// Runs `body` on a new detached thread named `name` (truncated to 15 bytes, the Linux limit).
    static func spawn(name: String, _ body: @escaping @Sendable () -> Void) {
        let box = Unmanaged.passRetained(Box(name: name, body)).toOpaque()
        #if canImport(Glibc)
        var thread = pthread_t()
        #else
        var thread: pthread_t?
        #endif
        let result = pthread_create(&thread, nil, { raw in
            #if canImport(Glibc)
            let box = Unmanaged<Box>.fromOpaque(raw!).takeRetainedValue()
            #else
            let box = Unmanaged<Box>.fromOpaque(raw).takeRetainedValue()
            #endif
            box.setName()
            box.body()
            return nil
        }, box)
        precondition(result == 0, "pthread_create failed: \(result)")
        #if canImport(Glibc)
        pthread_detach(thread)
        #else
        pthread_detach(thread!)
        #endif
    }
}

/// A self-pipe that wakes an owner thread blocked in `poll(2)`.
/// `signal()` is safe from any thread; waiting and draining belong to the owner.
final class Wakeup: Sendable {
    private let fileDescriptor: Int32
    private let writeDescriptor: Int32
    /// A byte is in the pipe (or about to be) that the owner has not drained yet: further signals
    /// need not write another. Saves a `write(2)` per call while the owner is awake anyway.
    private let pending = Atomic<Bool>(false)

    init() {
        var fds: [Int32] = [-1, -1]
        let result = pipe(&fds)
        precondition(result == 0, "pipe failed")
        for fd in fds {
            _ = fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) | O_NONBLOCK)
            _ = fcntl(fd, F_SETFD, FD_CLOEXEC)
        }
        fileDescriptor = fds[0]
        writeDescriptor = fds[1]
    }

    deinit {
        close(fileDescriptor)
        close(writeDescriptor)
    }

    /// Wakes the owner. Call after publishing the work the owner should see (under a lock): the
    /// owner clears `pending` before it looks for work again, so either it sees the work, or this
    /// call sees `pending` cleared and writes. A full pipe already guarantees a wake-up, so a failed
    /// write is harmless.
    func signal() {
        guard !pending.exchange(true, ordering: .acquiringAndReleasing) else { return }
        var byte: UInt8 = 1
        _ = write(writeDescriptor, &byte, 1)
    }

    private func drain() {
        var buffer: (UInt64, UInt64, UInt64, UInt64) = (0, 0, 0, 0)
        let size = MemoryLayout.size(ofValue: buffer)
        while withUnsafeMutableBytes(of: &buffer, { read(fileDescriptor, $0.baseAddress, size) }) > 0 {}
    }

    /// Blocks the owner thread until `socket` is readable, `signal()` was called, or `timeout` passes.
    /// Pass `socket: -1` to wait on the wake-up alone. The owner looks for work after it returns.
    func wait(socket: Int32, timeout: Duration) {
        var fds = (
            pollfd(fd: fileDescriptor, events: Int16(POLLIN), revents: 0),
            pollfd(fd: socket, events: Int16(POLLIN), revents: 0)
        )
        // Rounded up, so a wait of under a millisecond does not become a busy loop of poll(0).
        var wholeMilliseconds = max(0, timeout.clampedMilliseconds)
        if wholeMilliseconds < Int64(Int32.max), Duration.milliseconds(wholeMilliseconds) < timeout { wholeMilliseconds += 1 }
        let milliseconds = Int32(clamping: wholeMilliseconds)
        let count: nfds_t = socket >= 0 ? 2 : 1
        _ = withUnsafeMutableBytes(of: &fds) { raw in
            poll(raw.baseAddress!.assumingMemoryBound(to: pollfd.self), count, milliseconds)
        }
        if fds.0.revents != 0 {
            drain()
            pending.store(false, ordering: .releasing)
        }
    }
}

/// Capped exponential backoff with full jitter, for reconnecting.
public struct AMQPBackoff: Sendable, Equatable {
    /// First delay (default 100 ms).
    public var initial: Duration
    /// Upper bound for any delay (default 5 s).
    public var maximum: Duration

    public init(initial: Duration = .milliseconds(100), maximum: Duration = .seconds(5)) {
        self.initial = initial
        self.maximum = maximum
    }

    /// The delay before attempt `attempt` (0-based): uniform in [cap/2, cap], cap = min(maximum, initial * 2^attempt).
    func delay(attempt: Int) -> Duration {
        let factor = Double(1 << min(max(attempt, 0), 20))
        // Compared in seconds first: a huge `initial` multiplied as a `Duration` would trap.
        let cap = initial.secondsValue * factor >= maximum.secondsValue ? maximum : initial * factor
        return cap * Double.random(in: 0.5...1.0)
    }
}
