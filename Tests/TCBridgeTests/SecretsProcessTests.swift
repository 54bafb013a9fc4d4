import AMQPClient
import Foundation
import HTTPTypes
import Synchronization
import TestSupport
import Testing
import TutorCruncher

// The real `tc-bridge` executable: key checks at start-up, key rotation on SIGHUP, and the dedup
// window surviving a restart.

/// Runs `tc-bridge ARGS` to completion, killing it after `timeout` (a bridge that wrongly starts
/// would otherwise run forever). The environment has no key, broker URL or spool unless given.
func runBridgeCommand(
    _ arguments: [String], environment: [String: String] = [:], timeout: Duration = .seconds(20)
) async throws -> (status: Int32, output: String, timedOut: Bool) {
    var env = ProcessInfo.processInfo.environment
    for key in ["TC_PRIVATE_KEY", "TC_PRIVATE_KEY_FILE", "AMQP_URL", "TC_BRIDGE_ALLOW_INSECURE_KEY_FILE"] { env.removeValue(forKey: key) }
    env["AMQP_URL"] = "amqp://guest:guest@127.0.0.1:1/%2F"  // nothing listens there
    env["TC_BRIDGE_SPOOL_DIR"] = NSTemporaryDirectory() + "tc-bridge-cli-spool-\(UUID().uuidString)"
    for (key, value) in environment { env[key] = value }
    let process = Process()
    process.executableURL = URL(fileURLWithPath: BridgeProcess.executable)
    process.arguments = arguments
    process.environment = env
    let pipe = Pipe()
    process.standardOutput = pipe
    process.standardError = pipe
    let collected = Mutex((data: Data(), ended: false))
    pipe.fileHandleForReading.readabilityHandler = { handle in
        let data = handle.availableData
        if data.isEmpty {
            handle.readabilityHandler = nil
            collected.withLock { $0.ended = true }
        } else {
            collected.withLock { $0.data.append(data) }
        }
    }
    try process.run()
    var timedOut = false
    do {
        try await waitUntil(timeout: timeout, "tc-bridge to exit") { !process.isRunning }
    } catch is TimedOut {
        timedOut = true
        process.terminate()
        try await waitUntil("tc-bridge to stop after SIGTERM") { !process.isRunning }
    }
    process.waitUntilExit()
    // The last bytes may still be on their way to the handler: wait for the end of the output.
    try? await waitUntil(timeout: .seconds(5), "the end of tc-bridge's output") { collected.withLock { $0.ended } }
    let output = String(decoding: collected.withLock { $0.data }, as: UTF8.self)
    return (process.terminationStatus, output, timedOut)
}

/// A key file with `keys` (one per line) and the given permissions.
func writeKeyFile(_ keys: [String], at path: String = NSTemporaryDirectory() + "tcbridge-key-\(UUID().uuidString)", mode: Int = 0o600) throws
    -> String
{
    // Written beside and renamed over, as an operator (or a secret manager) should, so a reload
    // never sees a half-written file.
    let temporary = path + ".new"
    let contents = Data((keys.joined(separator: "\n") + "\n").utf8)
    guard FileManager.default.createFile(atPath: temporary, contents: contents, attributes: [.posixPermissions: mode]) else {
        throw KeyFileWriteError(path: temporary)
    }
    guard rename(temporary, path) == 0 else { throw KeyFileWriteError(path: path) }
    return path
}

struct KeyFileWriteError: Error {
    var path: String
}

func randomKey(_ label: String) -> String { "\(label)-\(UUID().uuidString)" }

@Suite struct KeyCheckCommandLineTests {
    @Test(arguments: ["   ", "\t", " \t \r\n "])
    func aWhitespaceKeyIsRefused(key: String) async throws {
        let result = try await runBridgeCommand(["serve", "--port", "0"], environment: ["TC_PRIVATE_KEY": key])
        #expect(!result.timedOut, "the bridge started with an empty HMAC key")
        #expect(result.status != 0)
        #expect(result.output.contains("TC_PRIVATE_KEY is only whitespace"))
    }

    @Test func aKeyFileOthersCanReadIsRefusedWithoutShowingTheKey() async throws {
        let key = randomKey("insecure")
        let path = try writeKeyFile([key], mode: 0o644)
        let result = try await runBridgeCommand(["serve", "--port", "0", "--private-key-file", path])
        #expect(!result.timedOut, "the bridge started with a world-readable key file")
        #expect(result.status != 0)
        #expect(result.output.contains("private key file \(path) is accessible by group or others (mode 644)"))
        #expect(result.output.contains("--allow-insecure-key-file"))
        #expect(!result.output.contains(key))
        let groupReadable = try writeKeyFile([key], mode: 0o640)
        let second = try await runBridgeCommand(["serve", "--port", "0"], environment: ["TC_PRIVATE_KEY_FILE": groupReadable])
        #expect(second.status != 0 && !second.timedOut)
        #expect(second.output.contains("mode 640"))
    }

    @Test func aKeyFileOfBlanksIsRefused() async throws {
        let path = try writeKeyFile(["  ", "\t"])
        let result = try await runBridgeCommand(["serve", "--port", "0", "--private-key-file", path])
        #expect(!result.timedOut)
        #expect(result.status != 0)
        #expect(result.output.contains("is empty"))
    }

    @Test func aDedupWindowShorterThanTheReplayWindowIsRefused() async throws {
        let result = try await runBridgeCommand(
            ["serve", "--port", "0", "--dedup-window", "600", "--max-age", "3600"], environment: ["TC_PRIVATE_KEY": "k"])
        #expect(!result.timedOut)
        #expect(result.status != 0)
        #expect(result.output.contains("must be at least --max-age + --max-future-skew (3900 s)"))
        let disabled = try await runBridgeCommand(["serve", "--port", "0", "--dedup-window", "0"], environment: ["TC_PRIVATE_KEY": "k"])
        #expect(disabled.status != 0 && !disabled.timedOut)
    }

    @Test func anUnusableDedupJournalIsRefused() async throws {
        let spool = NSTemporaryDirectory() + "tc-bridge-journal-\(UUID().uuidString)"
        defer { try? FileManager.default.removeItem(atPath: spool) }
        try FileManager.default.createDirectory(atPath: spool + "/dedup.log", withIntermediateDirectories: true)
        let result = try await runBridgeCommand(
            ["serve", "--port", "0", "--spool-dir", spool], environment: ["TC_PRIVATE_KEY": "k", "TC_BRIDGE_LOG_LEVEL": "critical"])
        #expect(!result.timedOut)
        #expect(result.status != 0)
        #expect(result.output.contains("cannot use the dedup journal"))
    }

    /// A spool the bridge cannot recover into is refused at start, with the reason, whether or not
    /// the dedup journal (beside it) would have opened.
    @Test func anUnusableSpoolDirectoryIsRefused() async throws {
        // The lock cannot be taken (`lock` is a directory); the journal itself would open.
        let spool = NSTemporaryDirectory() + "tc-bridge-unlockable-\(UUID().uuidString)"
        defer { try? FileManager.default.removeItem(atPath: spool) }
        try FileManager.default.createDirectory(atPath: spool + "/lock", withIntermediateDirectories: true)
        let unlockable = try await runBridgeCommand(
            ["serve", "--port", "0", "--spool-dir", spool], environment: ["TC_PRIVATE_KEY": "k", "TC_BRIDGE_LOG_LEVEL": "critical"])
        #expect(!unlockable.timedOut)
        #expect(unlockable.status != 0)
        #expect(unlockable.output.contains("cannot use the spool directory: cannot open \(spool)/lock"))
        #expect(!FileManager.default.fileExists(atPath: spool + "/dedup.log"))
        // The directory cannot be created, and no journal is asked for.
        let uncreatable = try await runBridgeCommand(
            ["serve", "--port", "0", "--spool-dir", "/dev/null/spool", "--dedup-window", "0", "--max-age", "0"],
            environment: ["TC_PRIVATE_KEY": "k", "TC_BRIDGE_LOG_LEVEL": "critical"])
        #expect(!uncreatable.timedOut)
        #expect(uncreatable.status != 0)
        #expect(uncreatable.output.contains("cannot use the spool directory: cannot create /dev/null/spool"))
    }

    @Test func aSpoolDirectoryLockedByAnotherProcessIsRefused() async throws {
        let spool = NSTemporaryDirectory() + "tc-bridge-locked-spool-\(UUID().uuidString)"
        try FileManager.default.createDirectory(atPath: spool, withIntermediateDirectories: true)
        // Another process holds the spool's lock, as a running bridge does (`flock -o`: the lock is
        // the flock process's own and goes when it is killed).
        let holder = Process()
        holder.executableURL = URL(fileURLWithPath: "/usr/bin/flock")
        holder.arguments = ["-o", spool + "/lock", "-c", "echo locked; while kill -0 $PPID 2>/dev/null; do sleep 0.2; done"]
        let output = Pipe()
        holder.standardOutput = output
        holder.standardInput = FileHandle.nullDevice
        let said = Mutex("")
        output.fileHandleForReading.readabilityHandler = { handle in
            let data = handle.availableData
            if data.isEmpty { handle.readabilityHandler = nil } else { said.withLock { $0 += String(decoding: data, as: UTF8.self) } }
        }
        try holder.run()
        try await waitUntil("flock to hold the spool's lock") { said.withLock { $0.contains("locked") } }
        let result = try await runBridgeCommand(
            ["serve", "--port", "0", "--spool-dir", spool], environment: ["TC_PRIVATE_KEY": "k", "TC_BRIDGE_LOG_LEVEL": "critical"])
        kill(holder.processIdentifier, SIGKILL)
        try await waitUntil("the lock holder's lock to go") {
            let descriptor = open(spool + "/lock", O_RDWR | O_CLOEXEC)
            defer { if descriptor >= 0 { close(descriptor) } }
            return descriptor >= 0 && flock(descriptor, LOCK_EX | LOCK_NB) == 0
        }
        #expect(!result.timedOut)
        #expect(result.status != 0)
        #expect(result.output.contains("spool directory \(spool) is in use by another tc-bridge process"))
    }

    @Test func aSecondBridgeOnTheSameSpoolDirectoryIsRefused() async throws {
        let spool = NSTemporaryDirectory() + "tc-bridge-shared-spool-\(UUID().uuidString)"
        // The first bridge runs (spooling: nothing listens on the broker port).
        let first = try await BridgeProcess(
            node: RabbitMQNode(name: "absent", port: 1), arguments: ["--spool-dir", spool], environment: ["TC_BRIDGE_LOG_LEVEL": "critical"])
        let second = try await runBridgeCommand(
            ["serve", "--port", "0", "--spool-dir", spool], environment: ["TC_PRIVATE_KEY": "k", "TC_BRIDGE_LOG_LEVEL": "critical"])
        #expect(!second.timedOut)
        #expect(second.status != 0)
        #expect(second.output.contains("is in use by another tc-bridge process"))
        let stillServing = try await postSigned(port: first.port, body: Webhooks.body(actions: ["FIRST_STILL_SERVES"]))
        #expect(stillServing.body == "{\"events\":1,\"spooled\":true}\n")
        first.signal(SIGTERM)
        #expect(try await first.waitForExit() == 0)
    }

    @Test(arguments: [true, false])
    func theOverrideAcceptsAnInsecureKeyFile(asFlag: Bool) async throws {
        let key = randomKey("override")
        let path = try writeKeyFile([key], mode: 0o644)
        let bridge = try await BridgeProcess(
            node: .shared, arguments: ["--private-key-file", path] + (asFlag ? ["--allow-insecure-key-file"] : []),
            environment: asFlag ? [:] : ["TC_BRIDGE_ALLOW_INSECURE_KEY_FILE": "1"])
        let body = Webhooks.body(actions: ["OVERRIDE"])
        let response = try await httpRequest(
            port: bridge.port, headers: [HTTPField.Name("webhook-signature")!: Webhooks.sign(body, key: key)], body: body)
        #expect(response.status == 200)
        // The file wins over TC_PRIVATE_KEY (which BridgeProcess also sets).
        #expect(try await postSigned(port: bridge.port, body: Webhooks.body(actions: ["ENV_KEY"])).status == 403)
        bridge.signal(SIGTERM)
        #expect(try await bridge.waitForExit() == 0)
    }
}

/// Key rotation with SIGHUP on the real process.
@Suite struct KeyRotationTests {
    func post(_ bridge: BridgeProcess, key: String, action: String = "ROTATION") async throws -> (status: Int, body: String) {
        let body = Webhooks.body(actions: [action])
        return try await httpRequest(
            port: bridge.port, headers: [HTTPField.Name("webhook-signature")!: Webhooks.sign(body, key: key)], body: body)
    }

    /// Requests signed with `key` from a few concurrent senders until stopped; every answer is recorded.
    final class Traffic: Sendable {
        let statuses = Recorder<Int>()
        let failures = Recorder<String>()
        private let stopped = Recorder<Bool>()
        private let senders: Mutex<[Task<Void, Never>]> = Mutex([])

        init(port: Int, key: String, workers: Int = 4) {
            let tasks = (0..<workers).map { worker in
                Task { [statuses, failures, stopped] in
                    var sequence = 0
                    while stopped.count == 0 {
                        sequence += 1
                        let body = Webhooks.body(actions: ["IN_FLIGHT"], subjectID: worker * 100_000 + sequence)
                        do {
                            let response = try await httpRequest(
                                port: port, headers: [HTTPField.Name("webhook-signature")!: Webhooks.sign(body, key: key)], body: body)
                            statuses.append(response.status)
                        } catch {
                            failures.append("\(error)")
                        }
                    }
                }
            }
            senders.withLock { $0 = tasks }
        }

        func stop() async {
            stopped.append(true)
            for task in senders.withLock({ $0 }) { await task.value }
        }
    }

    @Test func rotateWithSIGHUPWithoutDroppingARequest() async throws {
        let oldKey = randomKey("old")
        let newKey = randomKey("new")
        let exchange = "rotation-\(UUID().uuidString.prefix(8))"
        let path = try writeKeyFile([oldKey])
        let bridge = try await BridgeProcess(
            node: .shared, arguments: ["--private-key-file", path, "--exchange", exchange],
            environment: ["TC_BRIDGE_LOG_LEVEL": "notice"], captureStandardError: true)
        try await waitForHealthy(bridge)
        #expect(try await post(bridge, key: oldKey).status == 200)
        #expect(try await post(bridge, key: newKey).status == 403)

        // Step 1: add the new key first, keep the old one; reload while old-key traffic flows.
        let oldTraffic = Traffic(port: bridge.port, key: oldKey)
        try await waitUntil("traffic before the reload") { oldTraffic.statuses.count >= 20 }
        _ = try writeKeyFile([newKey, oldKey], at: path)
        bridge.signal(SIGHUP)
        try await waitUntil("the new key accepted") { try await post(bridge, key: newKey).status == 200 }
        let reloadedAt = oldTraffic.statuses.count
        try await waitUntil("traffic after the reload") { oldTraffic.statuses.count >= reloadedAt + 20 }
        await oldTraffic.stop()
        #expect(oldTraffic.failures.all.isEmpty, "requests dropped during the reload: \(oldTraffic.failures.all.prefix(3))")
        #expect(Set(oldTraffic.statuses.all) == [200], "every in-flight request answered 200")

        // Step 2: TutorCruncher now signs with the new key; remove the old one.
        let newTraffic = Traffic(port: bridge.port, key: newKey)
        try await waitUntil("new-key traffic") { newTraffic.statuses.count >= 20 }
        _ = try writeKeyFile([newKey], at: path)
        bridge.signal(SIGHUP)
        try await waitUntil("the old key refused") { try await post(bridge, key: oldKey).status == 403 }
        let removedAt = newTraffic.statuses.count
        try await waitUntil("traffic after the second reload") { newTraffic.statuses.count >= removedAt + 20 }
        await newTraffic.stop()
        #expect(newTraffic.failures.all.isEmpty)
        #expect(Set(newTraffic.statuses.all) == [200])
        print("key rotation: \(oldTraffic.statuses.count + newTraffic.statuses.count) requests during two reloads, all 200")

        // A bad file on reload keeps the current keys.
        _ = try writeKeyFile([newKey], at: path, mode: 0o644)
        bridge.signal(SIGHUP)
        try await waitUntil("the refused reload logged") { bridge.standardError.contains("signing keys not reloaded; keeping the previous ones") }
        _ = try writeKeyFile(["   "], at: path)
        bridge.signal(SIGHUP)
        try await waitUntil("the second refused reload logged") { bridge.standardError.components(separatedBy: "keeping the previous ones").count == 3 }
        #expect(try await post(bridge, key: newKey).status == 200)
        #expect(try await post(bridge, key: oldKey).status == 403)

        bridge.signal(SIGTERM)
        #expect(try await bridge.waitForExit() == 0)
        let log = bridge.standardError
        #expect(log.contains("signing keys reloaded"))
        #expect(!log.contains(oldKey) && !log.contains(newKey), "a key appeared in the log")
    }

    @Test func anEnvironmentKeyCannotBeReloadedAndSIGHUPDoesNotStopTheBridge() async throws {
        let bridge = try await BridgeProcess(node: .shared, captureStandardError: true)
        bridge.signal(SIGHUP)
        try await waitUntil("the refusal logged") { bridge.standardError.contains("cannot be reloaded") }
        #expect(bridge.process.isRunning)
        #expect(try await postSigned(port: bridge.port, body: Webhooks.body(actions: ["STILL_HERE"])).status == 200)
        bridge.signal(SIGTERM)
        #expect(try await bridge.waitForExit() == 0)
        #expect(!bridge.standardError.contains(Webhooks.testKey))
    }
}

/// The dedup window survives a restart: a captured body replayed to a new process is not published again.
@Suite struct DedupRestartTests {
    @Test(arguments: [SIGTERM, SIGKILL])
    func aBodyAcceptedBeforeARestartIsADuplicateAfterIt(stop: Int32) async throws {
        let exchange = "dedup-restart-\(UUID().uuidString.prefix(8))"
        let spool = NSTemporaryDirectory() + "tc-bridge-dedup-restart-\(UUID().uuidString)"
        let arguments = ["--exchange", exchange, "--spool-dir", spool]
        let probe = try await QueueProbe(exchange: exchange)
        defer { Task { await probe.stop() } }
        let body = Webhooks.body(actions: ["CAPTURED"])

        let first = try await BridgeProcess(node: .shared, arguments: arguments)
        try await waitForHealthy(first)
        #expect(try await postSigned(port: first.port, body: body).body == "{\"events\":1}\n")
        first.signal(stop)  // SIGKILL: the digest must already be on disk when the 200 went out
        _ = try await first.waitForExit()

        let second = try await BridgeProcess(node: .shared, arguments: arguments)
        try await waitForHealthy(second)
        let replay = try await postSigned(port: second.port, body: body)
        #expect(replay.status == 200)
        #expect(replay.body == "{\"duplicate\":true}\n")
        #expect(try await postSigned(port: second.port, body: Webhooks.body(actions: ["SENTINEL"])).status == 200)
        let before = try await probe.messages(before: "SENTINEL")
        #expect(before.map(\.routingKey) == ["CAPTURED"], "the queue holds the captured body once")
        let journal = try FileManager.default.attributesOfItem(atPath: spool + "/dedup.log")
        #expect((journal[.posixPermissions] as? Int) == 0o600)
        second.signal(SIGTERM)
        #expect(try await second.waitForExit() == 0)
    }
}
