import NIOCore
import NIOPosix

// Swift concurrency's global executor runs on NIO's event loops: a request's handler, its publish
// continuation and the response write then share the same two threads instead of hopping between
// NIO's threads and the cooperative pool (a context switch each way). Must run before any task is
// enqueued; when it cannot (another hook is installed), the default executor is used as before.
_ = NIOSingletons.unsafeTryInstallSingletonPosixEventLoopGroupAsConcurrencyGlobalExecutor()

await TCBridgeCommand.asyncMain()
