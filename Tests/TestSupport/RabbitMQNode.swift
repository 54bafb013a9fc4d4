import AMQPClient
import Foundation

/// A private RabbitMQ node run by `scripts/rabbitmq`, on loopback.
///
/// ``shared`` is the suite-wide broker (started by `scripts/test`, or here when missing; never
/// skipped). Tests that stop, kill or alarm a broker use their own node (``withDedicated(name:port:tls:isolation:_:)``)
/// so they cannot disturb tests running in parallel.
public struct RabbitMQNode: Sendable {
    public let name: String
    public let port: Int
    /// An extra amqps listener, when set.
    public let tls: TLSListener?

    /// A node description; nothing is started until ``start()``.
    public init(name: String, port: Int, tls: TLSListener? = nil) {
        self.name = name
        self.port = port
        self.tls = tls
    }

    public var url: String { "amqp://guest:guest@127.0.0.1:\(port)/%2F" }
    public var connection: AMQPConnectionConfiguration {
        var configuration = try! AMQPConnectionConfiguration(url: url)
        configuration.heartbeat = .seconds(5)
        configuration.connectionName = "tc-bridge-tests"
        return configuration
    }

    /// The shared test broker: `TCBRIDGE_TEST_AMQP_PORT` (default 5673), node name `test`. Meant to
    /// be running already (`scripts/test` starts it first): started here, the boot blocks the
    /// thread that touched it first, and every thread that touches it meanwhile, for seconds.
    public static let shared: RabbitMQNode = {
        let port = ProcessInfo.processInfo.environment["TCBRIDGE_TEST_AMQP_PORT"].flatMap(Int.init) ?? 5673
        let node = RabbitMQNode(name: "test", port: port)
        try! node.start()
        return node
    }()

    // The blocking forms, for code that is not async (a `static let`, a thread of its own). In
    // async code the compiler refuses them: held on one of the test process's two cooperative
    // threads, a node booting or stopping (seconds) stalls every other test.

    @available(*, noasync, message: "blocks for seconds: use the async form")
    public func start() throws {
        var arguments = ["start", "--name", name, "--port", String(port)]
        if let tls {
            arguments += ["--tls-port", String(tls.port), "--tls-dir", tls.certificates.directory]
            if tls.verifyPeer { arguments.append("--tls-verify-peer") }
        }
        try script(arguments)
    }
    /// Stops the node (a frozen one too: `scripts/rabbitmq stop` resumes it first).
    @available(*, noasync, message: "blocks for seconds: use the async form")
    public func stop() throws { try script("stop", "--name", name) }
    @available(*, noasync, message: "blocks for seconds: use the async form")
    public func kill() throws { try script("kill", "--name", name) }
    /// Freezes the node (SIGSTOP): connections stay open but nothing is read or answered.
    @available(*, noasync, message: "use the async form")
    public func pause() throws { try script("pause", "--name", name) }
    @available(*, noasync, message: "use the async form")
    public func resume() throws { try script("resume", "--name", name) }
    @available(*, noasync, message: "runs a script: use it from a thread of its own")
    public var isRunning: Bool { (try? script("status", "--name", name)) != nil }

    /// Runs `rabbitmqctl ARGS` against this node and returns its output.
    @available(*, noasync, message: "blocks for seconds: use the async form")
    @discardableResult
    public func ctl(_ arguments: String...) throws -> String {
        try script(["ctl", "--name", name, "--"] + arguments)
    }

    // The same operations for async code: each runs `scripts/rabbitmq` (an Erlang boot, a
    // rabbitmqctl call) on a thread of its own.

    /// Starts a node of its own for a disruptive test, runs `body` with it, and stops the node on
    /// every path, a failed start included (a half-booted node would be taken for a running one by
    /// the next test of that name). A stop that fails after `body` succeeded fails the test.
    /// (A `defer` cannot await, and a blocking stop there would hold a cooperative thread.)
    public static func withDedicated<Value>(
        name: String, port: Int, tls: TLSListener? = nil,
        isolation: isolated (any Actor)? = #isolation,
        _ body: (RabbitMQNode) async throws -> Value
    ) async throws -> Value {
        let node = RabbitMQNode(name: name, port: port, tls: tls)
        return try await stopping([node]) {
            try await node.start()
            return try await body(node)
        }
    }

    /// Runs `body`, then stops `nodes` whatever it did, and returns its value or throws its error;
    /// a failed stop is thrown when `body` succeeded.
    public static func stopping<Value>(
        _ nodes: [RabbitMQNode], isolation: isolated (any Actor)? = #isolation, after body: () async throws -> Value
    ) async throws -> Value {
        let result: Result<Value, any Error>
        do {
            result = .success(try await body())
        } catch {
            result = .failure(error)
        }
        var stopFailure: (any Error)?
        for node in nodes {
            do { try await node.stop() } catch { stopFailure = stopFailure ?? error }
        }
        let value = try result.get()
        if let stopFailure { throw stopFailure }
        return value
    }

    /// Waits for one of two boot slots first. The suite's dedicated nodes all start in its first
    /// seconds, and eight Erlang VMs booting at once on two cores starved the shared broker, which
    /// then stopped confirming for seconds. (The waiting is on the start's own thread.)
    public func start() async throws {
        try await onOwnThread {
            Self.boots.wait()
            defer { Self.boots.signal() }
            try self.start()
        }
    }
    private static let boots = DispatchSemaphore(value: 2)

    public func stop() async throws { try await onOwnThread { try self.stop() } }
    public func kill() async throws { try await onOwnThread { try self.kill() } }
    public func pause() async throws { try await onOwnThread { try self.pause() } }
    public func resume() async throws { try await onOwnThread { try self.resume() } }

    /// Runs `rabbitmqctl ARGS` against this node and returns its output.
    @discardableResult
    public func ctl(_ arguments: String...) async throws -> String {
        try await onOwnThread { try self.script(["ctl", "--name", self.name, "--"] + arguments) }
    }

    @discardableResult
    private func script(_ arguments: String...) throws -> String { try script(arguments) }

    @discardableResult
    private func script(_ arguments: [String]) throws -> String {
        try runProcess(Repository.root + "/scripts/rabbitmq", arguments)
    }
}

public enum Repository {
    /// The package root, found from this file's path.
    public static let root: String = {
        var url = URL(fileURLWithPath: #filePath)
        for _ in 0..<3 { url.deleteLastPathComponent() }
        return url.path
    }()

    /// Where the scripts keep broker nodes and other test state: `$TCBRIDGE_STATE_DIR` or `.tcbridge/`.
    public static var stateDirectory: String {
        ProcessInfo.processInfo.environment["TCBRIDGE_STATE_DIR"].flatMap { $0.isEmpty ? nil : $0 } ?? root + "/.tcbridge"
    }

    public static func fixture(_ name: String) -> [UInt8] {
        let path = root + "/Tests/TutorCruncherTests/Fixtures/" + name
        return Array(FileManager.default.contents(atPath: path)!)
    }
}

public struct ProcessFailure: Error, CustomStringConvertible {
    public var command: String
    public var status: Int32
    public var output: String
    public var description: String { "\(command) exited \(status): \(output)" }
}

/// Runs a command to completion on a thread of its own; throws with its output when it fails.
@discardableResult
public func runProcess(_ executable: String, _ arguments: [String], environment: [String: String]? = nil) async throws -> String {
    try await onOwnThread { try runProcess(executable, arguments, environment: environment) }
}

/// Runs a command to completion; throws with its output when it fails. Blocks the calling thread.
@available(*, noasync, message: "blocks the calling thread: use the async form")
@discardableResult
public func runProcess(_ executable: String, _ arguments: [String], environment: [String: String]? = nil) throws -> String {
    let process = Process()
    process.executableURL = URL(fileURLWithPath: executable)
    process.arguments = arguments
    if let environment { process.environment = environment }
    let pipe = Pipe()
    process.standardOutput = pipe
    process.standardError = pipe
    try process.run()
    let data = pipe.fileHandleForReading.readDataToEndOfFile()
    process.waitUntilExit()
    let output = String(decoding: data, as: UTF8.self)
    guard process.terminationStatus == 0 else {
        throw ProcessFailure(
            command: ([executable] + arguments).joined(separator: " "), status: process.terminationStatus, output: output)
    }
    return output
}

/// Polls `condition` every 20 ms until it holds or `timeout` passes. For waiting on a real
/// condition (a broker state, a queue depth), never in place of one.
public func waitUntil(
    timeout: Duration = .seconds(30), _ what: String, _ condition: () async throws -> Bool
) async throws {
    let deadline = ContinuousClock.now.advanced(by: timeout)
    while true {
        // Checked once more after the deadline: a sleep that overran it (the test process's few
        // threads busy elsewhere) must not turn a condition that holds into a timeout.
        if try await condition() { return }
        if ContinuousClock.now >= deadline { break }
        try await Task.sleep(for: .milliseconds(20))
    }
    throw TimedOut(what: what, timeout: timeout)
}

public struct TimedOut: Error, CustomStringConvertible {
    public var what: String
    public var timeout: Duration
    public init(what: String, timeout: Duration) {
        self.what = what
        self.timeout = timeout
    }
    public var description: String { "timed out after \(timeout) waiting for \(what)" }
}
