import TCBridge

// Swift concurrency's global executor runs on NIO's event loops: tasks started by the bridge and
// whatever they resume share NIO's threads instead of hopping between them and the cooperative pool
// (a context switch each way); a request's own task prefers its channel's loop (EventLoopTaskExecutor).
// Must run before any task is enqueued; when it cannot (another hook is installed), the default
// executor is used, and `serve` says so in its first log line.
EventLoopGlobalExecutor.install()

await TCBridgeCommand.asyncMain()
