import NIOPosix

/// CPU work of milliseconds to seconds, kept off the event loops (and every connection on them):
/// large bodies' verification, hashing and parsing, large spool batches' decoding.
enum HeavyWork {
    /// Work on more bytes than this runs on ``pool``; less runs where it is called.
    static let offloadThreshold = 256 << 10

    /// Two threads, the bridge's own (NIO's shared pool also serves blocking file I/O, which must
    /// not queue a request behind it). Lives as long as the process.
    private static let pool: NIOThreadPool = {
        let pool = NIOThreadPool(numberOfThreads: 2)
        pool.start()
        return pool
    }()

    /// Runs `work` on the calling task when `bytes` is at most ``offloadThreshold``, else on ``pool``
    /// (or here, when the pool is shutting down, rather than not at all).
    static func run<T: Sendable>(bytes: Int, _ work: @escaping @Sendable () -> T) async -> T {
        guard bytes > offloadThreshold else { return work() }
        do {
            return try await pool.runIfActive { work() }
        } catch {
            return work()
        }
    }
}
