import CSwiftConcurrencyHook
import NIOCore
import NIOPosix

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
/// Not covered, as with NIO's hook: a task waking from `Task.sleep` is resumed by the runtime's
/// timer on a Dispatch thread and runs there until it next suspends.
///
/// So CPU work of more than a moment and blocking calls do not belong in a task: they go to threads
/// or queues of their own (the publisher's owner thread, the spool's and the dedup journal's
/// queues, ``HeavyWork``, ``AMQPClient/AMQPAdmin``'s threads).
public enum EventLoopGlobalExecutor {
    /// Installs the hook; `true` when this call installed it, `false` when a hook was already
    /// there (installed before, by this or other code: the default executor then stays unless it
    /// was this one). Call once, from the main thread, before any task is enqueued.
    @discardableResult
    public static func install() -> Bool {
        // The hook's type is the runtime's, not public API: the same compilers as NIO's own hook.
        #if compiler(<6.6)
        typealias Hook = @convention(thin) (UnownedJob, @convention(thin) (UnownedJob) -> Void) -> Void
        let hook: Hook = { job, _ in
            MultiThreadedEventLoopGroup.singleton.any().enqueue(ExecutorJob(job))
        }
        // A thin function is a bare code pointer, the type of the runtime's hook variable.
        return withUnsafeTemporaryAllocation(of: Hook.self, capacity: 1) { slot in
            slot.initialize(repeating: hook)
            return slot.withMemoryRebound(to: UnsafeRawPointer.self) { pointer in
                tcbridge_install_global_enqueue_hook(pointer[0])
            }
        }
        #else
        return NIOSingletons.unsafeTryInstallSingletonPosixEventLoopGroupAsConcurrencyGlobalExecutor()
        #endif
    }

    /// Whether a task started now without a preferred executor runs on one of NIO's event loops:
    /// what ``install()`` is for, observed rather than assumed.
    public static func tasksRunOnEventLoops() async -> Bool {
        await Task.detached { MultiThreadedEventLoopGroup.currentEventLoop != nil }.value
    }
}
