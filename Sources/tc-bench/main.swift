import TCBridge

// As in tc-bridge: Swift concurrency on NIO's event loops, so `http-floor` runs as the bridge does.
EventLoopGlobalExecutor.install()

await TCBenchCommand.asyncMain()
