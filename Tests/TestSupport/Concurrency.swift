import Foundation
import Synchronization

/// A gate tasks wait at until it is opened. Thread-safe.
public final class Gate: Sendable {
    private let state = Mutex<(open: Bool, waiters: [CheckedContinuation<Void, Never>])>((false, []))

    public init() {}

    public var isOpen: Bool { state.withLock { $0.open } }

    public func wait() async {
        await withCheckedContinuation { continuation in
            let proceed = state.withLock { state in
                if state.open { return true }
                state.waiters.append(continuation)
                return false
            }
            if proceed { continuation.resume() }
        }
    }

    public func open() {
        let waiters = state.withLock { state in
            state.open = true
            defer { state.waiters = [] }
            return state.waiters
        }
        for waiter in waiters { waiter.resume() }
    }
}

/// A thread-safe list, for recording what concurrent handlers saw.
public final class Recorder<Element: Sendable>: Sendable {
    private let storage = Mutex<[Element]>([])
    public init() {}
    public func append(_ element: Element) { storage.withLock { $0.append(element) } }
    public var all: [Element] { storage.withLock { $0 } }
    public var count: Int { storage.withLock { $0.count } }
}

/// Counts concurrent activity and remembers the highest level seen.
public final class ConcurrencyMeter: Sendable {
    private let state = Mutex<(current: Int, peak: Int)>((0, 0))
    public init() {}
    public func enter() { state.withLock { $0.current += 1; $0.peak = max($0.peak, $0.current) } }
    public func leave() { state.withLock { $0.current -= 1 } }
    public var current: Int { state.withLock { $0.current } }
    public var peak: Int { state.withLock { $0.peak } }
}

/// Runs blocking `body` (starting or stopping a broker node, which takes seconds) on a thread of its
/// own, so the test process's two cooperative threads keep serving every other test meanwhile.
public func onOwnThread<T: Sendable>(_ body: @escaping @Sendable () throws -> T) async throws -> T {
    try await withCheckedThrowingContinuation { (continuation: CheckedContinuation<T, any Error>) in
        let thread = Thread {
            do {
                continuation.resume(returning: try body())
            } catch {
                continuation.resume(throwing: error)
            }
        }
        thread.start()
    }
}

/// Runs a CPU-heavy check (a model run, a mutation sweep: seconds in a debug build) off the
/// cooperative pool, one at a time. Held on one of the test process's two cooperative threads, such
/// checks stalled every test waiting on a broker until its 30 s deadline; run all at once on threads
/// of their own, they took every core from those tests instead. `body` must not use `#expect`
/// (no test is current on its thread): it returns what it found, for the caller to check.
public func runCPUHeavy<T: Sendable>(_ body: @escaping @Sendable () throws -> T) async throws -> T {
    try await onOwnThread {
        cpuHeavyLane.wait()
        defer { cpuHeavyLane.signal() }
        return try body()
    }
}

private let cpuHeavyLane = DispatchSemaphore(value: 1)

