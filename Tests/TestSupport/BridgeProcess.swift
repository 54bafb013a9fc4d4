import Foundation
import HTTPTypes
import HummingbirdTesting
import NIOCore
import Synchronization

/// The real `tc-bridge serve` executable in a child process, for signal and crash tests.
public final class BridgeProcess: @unchecked Sendable {
    // @unchecked: `process` is only started in init and then read; Foundation's Process is thread-safe for that.
    public let process: Process
    public let port: Int
    /// The spool directory this run uses (`TC_BRIDGE_SPOOL_DIR`): a later run given the same one
    /// forwards what this one left there.
    public let spoolDirectory: String
    private let output: Pipe
    private let errorLog: LogBuffer
    private let errors: Pipe?

    /// The built executable: next to the test bundle (`swift build` puts both in the bin path).
    public static var executable: String {
        if let path = ProcessInfo.processInfo.environment["TCBRIDGE_BIN"] { return path }
        let binDirectory = URL(fileURLWithPath: CommandLine.arguments[0]).deletingLastPathComponent()
        var candidate = binDirectory.appendingPathComponent("tc-bridge").path
        if !FileManager.default.fileExists(atPath: candidate) {
            // Running inside the .xctest bundle directory layout.
            candidate = binDirectory.deletingLastPathComponent().appendingPathComponent("tc-bridge").path
        }
        return candidate
    }

    /// Starts the bridge with `arguments` after `serve` and waits for its "listening" line.
    /// `captureStandardError`: keep the log (stderr) for ``standardError`` instead of passing it through.
    /// `spoolDirectory`: another run's ``spoolDirectory`` to take over; a new one by default.
    public init(
        node: RabbitMQNode, arguments: [String] = [], environment: [String: String] = [:], spoolDirectory: String? = nil,
        captureStandardError: Bool = false
    ) async throws {
        let process = Process()
        process.executableURL = URL(fileURLWithPath: Self.executable)
        process.arguments = ["serve", "--port", "0"] + arguments
        var env = ProcessInfo.processInfo.environment
        env["TC_PRIVATE_KEY"] = Webhooks.testKey
        env["AMQP_URL"] = node.url
        env["TC_BRIDGE_LOG_LEVEL"] = "warning"
        env["TC_BRIDGE_SPOOL_DIR"] = spoolDirectory ?? NSTemporaryDirectory() + "tc-bridge-spool-\(UUID().uuidString)"
        // The product's 2 s confirm timeout spools (and answers 200) when the broker is slow. The
        // shared broker on a loaded CI machine has stopped confirming for over 2 s, and a test
        // about metrics or signals then saw "spooled" where it waited for "published". So 7.5 s
        // (the bridge accepts up to the sender's 8 s), unless the runner's environment sets one;
        // tests about a slow broker pass `--confirm-timeout` (an argument wins over both).
        if env["TC_BRIDGE_CONFIRM_TIMEOUT"] == nil { env["TC_BRIDGE_CONFIRM_TIMEOUT"] = "7.5" }
        for (key, value) in environment { env[key] = value }
        self.spoolDirectory = env["TC_BRIDGE_SPOOL_DIR"] ?? ""
        process.environment = env
        let output = Pipe()
        process.standardOutput = output
        if captureStandardError {
            let errors = Pipe()
            let log = LogBuffer()
            self.errorLog = log
            errors.fileHandleForReading.readabilityHandler = { handle in
                let data = handle.availableData
                if data.isEmpty {
                    handle.readabilityHandler = nil
                    log.ended.withLock { $0 = true }
                } else {
                    log.text.withLock { $0 += String(decoding: data, as: UTF8.self) }
                }
            }
            process.standardError = errors
            self.errors = errors
        } else {
            process.standardError = FileHandle.standardError
            self.errorLog = LogBuffer()
            self.errors = nil
        }
        try process.run()
        self.process = process
        self.output = output
        // The blocking reads run on a thread of their own: on the two cooperative threads they
        // would stall every other test (and its HTTP clients) while this bridge starts, and on
        // Dispatch's global queue they would starve Foundation's child-process monitoring.
        let handle = output.fileHandleForReading
        let (port, collected) = await withCheckedContinuation { (continuation: CheckedContinuation<(Int?, String), Never>) in
            Thread {
                var collected = ""
                var port: Int?
                while port == nil {
                    let data = handle.availableData
                    if data.isEmpty { break }
                    collected += String(decoding: data, as: UTF8.self)
                    if let range = collected.range(of: #"listening on http://[^:]+:(\d+)"#, options: .regularExpression) {
                        port = collected[range].split(separator: ":").last.flatMap { Int($0) }
                    }
                }
                continuation.resume(returning: (port, collected))
            }.start()
        }
        guard let port else { throw ProcessFailure(command: "tc-bridge serve", status: -1, output: collected) }
        self.port = port
    }

    public func signal(_ signal: Int32) { kill(process.processIdentifier, signal) }

    /// Waits until `GET /health` answers 200, i.e. the bridge is connected to the broker.
    public func waitUntilHealthy(timeout: Duration = .seconds(30)) async throws {
        try await waitUntil(timeout: timeout, "bridge connected to the broker") {
            (try? await httpRequest(port: self.port, method: .get, path: "/health").status) == 200
        }
    }

    /// Waits for the process to exit and returns its exit status. With `captureStandardError`, also
    /// (for up to 5 s) until its stderr reached end of file: the pipe is read on its own thread, and
    /// the last lines before the exit must be in ``standardError`` when this returns. Not fatal: a
    /// process another test spawned meanwhile may have inherited the pipe's write end (Foundation's
    /// pipes are not close-on-exec) and keep it open; the lines are in by then all the same.
    public func waitForExit(timeout: Duration = .seconds(30)) async throws -> Int32 {
        try await waitUntil(timeout: timeout, "tc-bridge to exit") { !self.process.isRunning }
        if errors != nil {
            _ = try? await waitUntil(timeout: .seconds(5), "tc-bridge's stderr to end") { self.errorLog.ended.withLock { $0 } }
        }
        return process.terminationStatus
    }

    /// What the process wrote to stderr so far (its log), when started with `captureStandardError`.
    public var standardError: String { errorLog.text.withLock { $0 } }

    /// A bridge the test did not stop is killed outright: one stuck in its shutdown (SIGTERM
    /// handled, never finishing) would otherwise outlive the test process and, holding its standard
    /// error, keep `swift test` waiting for ever.
    deinit {
        if process.isRunning { kill(process.processIdentifier, SIGKILL) }
    }
}

/// Text collected from a pipe's readability handler. Thread-safe.
private final class LogBuffer: Sendable {
    let text = Mutex("")
    /// The pipe reached end of file: every writer (the process) closed it.
    let ended = Mutex(false)
}

/// One HTTP request on a fresh connection.
public func httpRequest(
    port: Int, method: HTTPRequest.Method = .post, path: String = "/webhook", headers: HTTPFields = [:], body: [UInt8] = []
) async throws -> (status: Int, body: String) {
    try await TestClient.withClient(host: "127.0.0.1", port: port) { client in
        let response = try await client.execute(
            TestClient.Request(path, method: method, headers: headers, body: body.isEmpty ? nil : ByteBuffer(bytes: body)))
        return (Int(response.status.code), response.body.map { String(buffer: $0) } ?? "")
    }
}

/// POSTs a body signed with the test key to `path`.
public func postSigned(port: Int, body: [UInt8], path: String = "/webhook") async throws -> (status: Int, body: String) {
    try await httpRequest(port: port, path: path, headers: [HTTPField.Name("webhook-signature")!: Webhooks.sign(body)], body: body)
}
