import NIOCore
import NIOPosix

// As in tc-bridge: Swift concurrency on NIO's event loops, so `http-floor` runs as the bridge does.
_ = NIOSingletons.unsafeTryInstallSingletonPosixEventLoopGroupAsConcurrencyGlobalExecutor()

await TCBenchCommand.asyncMain()
