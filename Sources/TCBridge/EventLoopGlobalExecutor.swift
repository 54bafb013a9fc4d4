import CSwiftConcurrencyHook
import NIOCore
import NIOPosix
import Synchronization

/// Swift concurrency's global executor on NIO's event loops (`MultiThreadedEventLoopGroup.singleton`).
///
/// What `NIOSingletons.unsafeTryInstallSingletonPosixEventLoopGroupAsConcurrencyGlobalExecutor()`
/// does, except that it reaches the runtime's hook variable by a link-time reference. NIO looks it
/// up with `dlsym`, which finds nothing in a binary with the Swift runtime linked in (`--static-swift-stdlib`
/// hides every symbol of the runtime's archives, and `scripts/build-release` links it in): NIO's
/// call returns `false` there, silently, and every task runs on the cooperative pool.
///
/// A job enqueued from one of the group's loops runs on that loop; from any other thread, on the
/// group's next loop. A task with a preferred executor (``EventLoopTaskExecutor``) runs there as before.
/// So nothing may block in a task: blocking work belongs on threads or queues of its own (the
/// publisher's owner thread, the spool's and the dedup journal's queues, ``AMQPClient/AMQPAdmin``'s threads).
public enum EventLoopGlobalExecutor {
    /// Installs the hook; `true` when this call installed it, `false` when a hook was already
    /// there (this one, or another: the default executor then stays). Call once, from the main
    /// thread, before any task is enqueued.
    @discardableResult
    public static func install() -> Bool {
        typealias Hook = @convention(thin) (UnownedJob, @convention(thin) (UnownedJob) -> Void) -> Void
        let hook: Hook = { job, _ in
            MultiThreadedEventLoopGroup.singleton.any().enqueue(ExecutorJob(job))
        }
        // A thin function is a bare code pointer, the type of the runtime's hook variable.
        let done = withUnsafeTemporaryAllocation(of: Hook.self, capacity: 1) { slot in
            slot.initialize(repeating: hook)
            return slot.withMemoryRebound(to: UnsafeRawPointer.self) { pointer in
                tcbridge_install_global_enqueue_hook(pointer[0])
            }
        }
        if done { installed.store(true, ordering: .releasing) }
        return done
    }

    /// `true` once ``install()`` has installed the hook in this process.
    public static var isInstalled: Bool { installed.load(ordering: .acquiring) }

    private static let installed = Atomic<Bool>(false)
}
