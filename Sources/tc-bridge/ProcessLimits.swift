import Logging

#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

/// Process-wide settings the receiver needs under hostile load. Called once at start-up.
enum ProcessLimits {
    static func prepare(connections: Int, logger: Logger) {
        #if canImport(Glibc)
        // Large buffers (request bodies) always come from mmap and go back to the system when
        // freed: glibc's adaptive threshold would otherwise move them onto the heap after the
        // first large free, and a burst of big bodies would leave the process's RSS high for good.
        // mallopt lives in <malloc.h>, which Glibc's module does not export.
        typealias Mallopt = @convention(c) (Int32, Int32) -> Int32
        let mmapThreshold: Int32 = -3  // M_MMAP_THRESHOLD
        if let symbol = dlsym(UnsafeMutableRawPointer(bitPattern: 0), "mallopt") {
            _ = unsafeBitCast(symbol, to: Mallopt.self)(mmapThreshold, 256 * 1024)
        }
        #endif
        // Each connection is a descriptor; raise the soft limit to the hard one when it is lower
        // than the connection cap plus room for the spool, the broker and the listener.
        var limit = rlimit()
        guard getrlimit(resourceLimitNoFile, &limit) == 0 else { return }
        let wanted = rlim_t(clamping: connections + 64)
        if limit.rlim_cur < wanted {
            limit.rlim_cur = min(wanted, limit.rlim_max)
            if setrlimit(resourceLimitNoFile, &limit) != 0 || limit.rlim_cur < wanted {
                logger.warning(
                    "open-file limit is below the connection cap",
                    metadata: ["limit": "\(limit.rlim_cur)", "max_connections": "\(connections)"])
            }
        }
    }

    #if canImport(Glibc)
    private static let resourceLimitNoFile = __rlimit_resource_t(RLIMIT_NOFILE.rawValue)
    #else
    private static let resourceLimitNoFile = RLIMIT_NOFILE
    #endif
}
