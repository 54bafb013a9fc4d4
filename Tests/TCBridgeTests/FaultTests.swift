import AMQPClient
import Foundation
import HTTPTypes
import Synchronization
import TestSupport
import Testing
import TutorCruncher
import TutorCruncherSignature

/// Nothing lost: the real `tc-bridge` executable, a stream of distinct signed webhooks, and faults
/// injected into a broker of its own. Every event answered 2xx must reach a queue bound with `#`.
/// Each test prints: sent / 2xx / 5xx / connection errors / delivered / duplicates.
@Suite(.serialized) struct FaultTests {
    static let node = RabbitMQNode(name: "faults", port: 5693)

    init() async throws {
        try await Self.node.start()
    }

    struct Setup {
        let exchange = "faults-\(UUID().uuidString.prefix(8))"
        let spoolDirectory = NSTemporaryDirectory() + "tc-bridge-fault-spool-\(UUID().uuidString)"
        /// A 1 s confirm timeout, so the faults' tests see a dead broker quickly; `nil` for
        /// ``BridgeProcess``'s (7.5 s), where a slow confirm on a loaded machine must not turn into a
        /// spooled answer.
        func arguments(_ extra: [String] = [], confirmTimeout: String? = "1") -> [String] {
            ["--exchange", exchange, "--spool-dir", spoolDirectory] + (confirmTimeout.map { ["--confirm-timeout", $0] } ?? []) + extra
        }
    }

    @Test func brokerStoppedFor20SecondsMidStream() async throws {
        let setup = Setup()
        let probe = try await QueueProbe(node: Self.node, exchange: setup.exchange)
        defer { Task { await probe.stop() } }
        let bridge = try await BridgeProcess(node: Self.node, arguments: setup.arguments(), environment: ["TC_BRIDGE_LOG_LEVEL": "error"])
        try await waitForHealthy(bridge)
        let stream = WebhookStream(port: bridge.port)
        try await stream.run {
            try await waitUntil("traffic before the outage") { stream.accepted.count >= 100 }
            try await Self.node.stop()
            try await Task.sleep(for: .seconds(20))  // the injected outage, while the stream keeps sending
            try await Self.node.start()
            try await waitForHealthy(bridge, timeout: .seconds(60))
            let resumedAt = stream.accepted.count
            try await waitUntil("traffic after the outage") { stream.accepted.count >= resumedAt + 100 }
        }
        let report = try await stream.verifyDelivered(to: probe, name: "broker stopped ~20 s")
        #expect(report.fiveHundreds == 0)
        #expect(report.connectionErrors == 0)
        #expect(report.spooled > 0, "the outage should have been absorbed by the spool")
        try await waitUntil(timeout: .seconds(60), "spool drained") { try await spoolRecords(bridge) == 0 }
        bridge.signal(SIGTERM)
        #expect(try await bridge.waitForExit() == 0)
    }

    @Test func brokerKilledMidStream() async throws {
        let setup = Setup()
        let probe = try await QueueProbe(node: Self.node, exchange: setup.exchange)
        defer { Task { await probe.stop() } }
        let bridge = try await BridgeProcess(node: Self.node, arguments: setup.arguments(), environment: ["TC_BRIDGE_LOG_LEVEL": "error"])
        try await waitForHealthy(bridge)
        let stream = WebhookStream(port: bridge.port)
        try await stream.run {
            try await waitUntil("traffic before the kill") { stream.accepted.count >= 200 }
            try await Self.node.kill()
            try await Task.sleep(for: .seconds(3))  // the injected outage
            try await Self.node.start()
            try await waitForHealthy(bridge, timeout: .seconds(60))
            let resumedAt = stream.accepted.count
            try await waitUntil("traffic after the restart") { stream.accepted.count >= resumedAt + 100 }
        }
        let report = try await stream.verifyDelivered(to: probe, name: "broker SIGKILLed")
        #expect(report.fiveHundreds == 0)
        try await waitUntil(timeout: .seconds(60), "spool drained") { try await spoolRecords(bridge) == 0 }
        bridge.signal(SIGTERM)
        #expect(try await bridge.waitForExit() == 0)
    }

    @Test func bridgeKilledWhileBrokerDownPublishesEverythingAfterRestart() async throws {
        let setup = Setup()
        let probe = try await QueueProbe(node: Self.node, exchange: setup.exchange)
        defer { Task { await probe.stop() } }
        try await Self.node.stop()
        let first = try await BridgeProcess(node: Self.node, arguments: setup.arguments(), environment: ["TC_BRIDGE_LOG_LEVEL": "error"])
        let stream = WebhookStream(port: first.port)
        try await stream.run(stopOnConnectionError: true) {
            try await waitUntil("spooled traffic") { stream.accepted.count >= 150 }
            first.signal(SIGKILL)
            _ = try await first.waitForExit()
        }
        #expect(stream.accepted.count >= 150)
        try await Self.node.start()
        let second = try await BridgeProcess(node: Self.node, arguments: setup.arguments(), environment: ["TC_BRIDGE_LOG_LEVEL": "error"])
        let report = try await stream.verifyDelivered(to: probe, name: "bridge SIGKILLed, broker down")
        #expect(report.fiveHundreds == 0)
        try await waitUntil(timeout: .seconds(60), "spool drained") { try await spoolRecords(second) == 0 }
        second.signal(SIGTERM)
        #expect(try await second.waitForExit() == 0)
    }

    @Test func spoolLimitAnswers503LosesNothingAndServiceResumes() async throws {
        let setup = Setup()
        let probe = try await QueueProbe(node: Self.node, exchange: setup.exchange)
        defer { Task { await probe.stop() } }
        try await Self.node.stop()
        let bridge = try await BridgeProcess(
            node: Self.node, arguments: setup.arguments(["--spool-max-bytes", "40000"]), environment: ["TC_BRIDGE_LOG_LEVEL": "critical"])
        let stream = WebhookStream(port: bridge.port)
        try await stream.run {
            try await waitUntil("the spool fills and 503s follow") { stream.fiveHundredCount >= 20 }
        }
        #expect(stream.accepted.count > 10)
        try await Self.node.start()
        try await waitForHealthy(bridge, timeout: .seconds(60))
        let report = try await stream.verifyDelivered(to: probe, name: "spool limit reached")
        #expect(report.fiveHundreds >= 20)
        try await waitUntil(timeout: .seconds(60), "spool drained") { try await spoolRecords(bridge) == 0 }
        // Normal service: straight to the broker again.
        try await expectPublishedStraightAway(port: bridge.port, action: "AFTER_THE_LIMIT")
        bridge.signal(SIGTERM)
        #expect(try await bridge.waitForExit() == 0)
    }

    @Test func identicalBodyPublishedOnceWithinTheWindowAndAgainAfterIt() async throws {
        let setup = Setup()
        let probe = try await QueueProbe(node: Self.node, exchange: setup.exchange)
        defer { Task { await probe.stop() } }
        let bridge = try await BridgeProcess(node: Self.node, arguments: setup.arguments(["--dedup-window", "1", "--max-age", "0"], confirmTimeout: nil))
        try await waitForHealthy(bridge)
        let body = Webhooks.body(actions: ["SENT_TWICE"])
        #expect(try await postSigned(port: bridge.port, body: body).body == "{\"events\":1}\n")
        #expect(try await postSigned(port: bridge.port, body: body).body == "{\"duplicate\":true}\n")
        #expect(try await postSigned(port: bridge.port, body: Webhooks.body(actions: ["SENTINEL_1"])).status == 200)
        let withinWindow = try await probe.messages(before: "SENTINEL_1")
        #expect(withinWindow.map { $0.routingKey } == ["SENT_TWICE"])
        // Once the window has passed, the same bytes are published again.
        try await waitUntil("the dedup window to pass") {
            try await postSigned(port: bridge.port, body: body).body == "{\"events\":1}\n"
        }
        #expect(try await postSigned(port: bridge.port, body: Webhooks.body(actions: ["SENTINEL_2"])).status == 200)
        try await waitUntil("second sentinel") { probe.messages.contains { $0.routingKey == "SENTINEL_2" } }
        #expect(probe.messages.filter { $0.routingKey == "SENT_TWICE" }.count == 2)
        bridge.signal(SIGTERM)
        #expect(try await bridge.waitForExit() == 0)
    }

    @Test func corruptSpoolRecordIsReportedAndSkipped() async throws {
        let setup = Setup()
        let probe = try await QueueProbe(node: Self.node, exchange: setup.exchange)
        defer { Task { await probe.stop() } }
        try await Self.node.stop()
        let first = try await BridgeProcess(node: Self.node, arguments: setup.arguments(), environment: ["TC_BRIDGE_LOG_LEVEL": "critical"])
        let bodies = ["BEFORE_CORRUPTION", "CORRUPTED", "AFTER_CORRUPTION"].map { Webhooks.body(actions: [$0]) }
        for body in bodies {
            let response = try await postSigned(port: first.port, body: body)
            #expect(response.body == "{\"events\":1,\"spooled\":true}\n")
        }
        first.signal(SIGTERM)
        #expect(try await first.waitForExit() == 0)

        // Flip bytes inside the middle record's payload.
        let segments = try FileManager.default.contentsOfDirectory(atPath: setup.spoolDirectory).filter { $0.hasSuffix(".spool") }
        #expect(segments.count == 1)
        let path = setup.spoolDirectory + "/" + segments[0]
        var bytes = Array(try Data(contentsOf: URL(fileURLWithPath: path)))
        let marker = Array("CORRUPTED".utf8)
        let position = try #require((0...(bytes.count - marker.count)).first { bytes[$0..<$0 + marker.count].elementsEqual(marker) })
        for offset in 0..<marker.count { bytes[position + offset] ^= 0x20 }
        try Data(bytes).write(to: URL(fileURLWithPath: path))

        try await Self.node.start()
        let second = try await BridgeProcess(node: Self.node, arguments: setup.arguments(), environment: ["TC_BRIDGE_LOG_LEVEL": "critical"])
        try await waitUntil(timeout: .seconds(60), "spool drained") { try await spoolRecords(second) == 0 }
        #expect(try await postSigned(port: second.port, body: Webhooks.body(actions: ["SENTINEL"])).status == 200)
        let delivered = try await probe.messages(before: "SENTINEL")
        #expect(Set(delivered.map { $0.routingKey }) == ["BEFORE_CORRUPTION", "AFTER_CORRUPTION"])
        let health = try await httpRequest(port: second.port, method: .get, path: "/health")
        #expect(health.body.contains("\"corrupt_records_set_aside\":1"))
        let keptAside = try FileManager.default.contentsOfDirectory(atPath: setup.spoolDirectory + "/corrupt")
        #expect(keptAside.count == 1)
        print("fault corrupt record: 3 spooled, 1 damaged and set aside (\(keptAside[0])), \(delivered.count) delivered")
        second.signal(SIGTERM)
        #expect(try await second.waitForExit() == 0)
    }

    @Test func memoryAlarmBlocksPublishingRequestsAreSpooledThenDrained() async throws {
        let setup = Setup()
        let probe = try await QueueProbe(node: Self.node, exchange: setup.exchange)
        defer { Task { await probe.stop() } }
        let bridge = try await BridgeProcess(node: Self.node, arguments: setup.arguments(), environment: ["TC_BRIDGE_LOG_LEVEL": "error"])
        try await waitForHealthy(bridge)
        let stream = WebhookStream(port: bridge.port, requestTimeout: .seconds(8))  // the sender's timeout
        do {
            try await stream.run {
                try await waitUntil("traffic before the alarm") { stream.accepted.count >= 50 }
                try await Self.node.ctl("set_vm_memory_high_watermark", "0.0001")
                try await waitUntil(timeout: .seconds(30), "requests being spooled under the alarm") { stream.spooledCount >= 50 }
                try await Self.node.ctl("set_vm_memory_high_watermark", "0.4")
                let resumedAt = stream.accepted.count
                try await waitUntil(timeout: .seconds(60), "traffic after the alarm") { stream.accepted.count >= resumedAt + 50 }
            }
        } catch {
            _ = try? await Self.node.ctl("set_vm_memory_high_watermark", "0.4")
            throw error
        }
        let report = try await stream.verifyDelivered(to: probe, name: "memory alarm (connection.blocked)")
        #expect(report.fiveHundreds == 0)
        #expect(report.connectionErrors == 0, "no request may hang past the sender's 8 s timeout")
        try await waitUntil(timeout: .seconds(60), "spool drained") { try await spoolRecords(bridge) == 0 }
        bridge.signal(SIGTERM)
        #expect(try await bridge.waitForExit() == 0)
    }

    /// Crash points: the bridge is SIGKILLed at random moments while it publishes, spools and
    /// forwards under load, and the broker is stopped and started between rounds. Every request
    /// answered 200 in any round is delivered in the end. The seed is printed; set
    /// `TCBRIDGE_CRASH_SEED` to replay a run, `TCBRIDGE_CRASH_ROUNDS` for more rounds.
    @Test func bridgeKilledAtRandomMomentsWithAFlappingBrokerLosesNothing() async throws {
        let environment = ProcessInfo.processInfo.environment
        let seed = environment["TCBRIDGE_CRASH_SEED"].flatMap(UInt64.init) ?? UInt64.random(in: 1...UInt64(UInt32.max))
        let rounds = environment["TCBRIDGE_CRASH_ROUNDS"].flatMap(Int.init) ?? 8
        print("crash points: seed \(seed), \(rounds) rounds (TCBRIDGE_CRASH_SEED=\(seed) replays the kill moments)")
        var random = SplitMix64(seed: seed)
        let setup = Setup()
        let probe = try await QueueProbe(node: Self.node, exchange: setup.exchange)
        defer { Task { await probe.stop() } }
        var accepted: Set<String> = []
        var spooled = 0
        for round in 0..<rounds {
            // The broker flaps: down for rounds 1, 4, 7…, back up for the round after.
            if round % 3 == 1 { try await Self.node.stop() }
            if round % 3 == 2 { try await Self.node.start() }
            let bridge = try await BridgeProcess(node: Self.node, arguments: setup.arguments(), environment: ["TC_BRIDGE_LOG_LEVEL": "error"])
            let stream = WebhookStream(port: bridge.port)
            let killAfter = Duration.milliseconds(Int64(random.next() % 2_500) + 200)
            try await stream.run {
                try await Task.sleep(for: killAfter)  // the crash point itself: a moment chosen at random
                bridge.signal(SIGKILL)
                _ = try await bridge.waitForExit()
            }
            accepted.formUnion(stream.accepted)
            spooled += stream.spooledCount
        }
        try await Self.node.start()
        let last = try await BridgeProcess(node: Self.node, arguments: setup.arguments(), environment: ["TC_BRIDGE_LOG_LEVEL": "error"])
        try await waitUntil(timeout: .seconds(120), "all \(accepted.count) accepted events delivered") {
            accepted.isSubset(of: Set(probe.messages.compactMap(\.properties.messageID)))
        }
        try await waitUntil(timeout: .seconds(60), "spool drained") { try await spoolRecords(last) == 0 }
        let ids = probe.messages.compactMap(\.properties.messageID).filter { accepted.contains($0) }
        print(
            "crash points: \(rounds) kills, \(accepted.count) answered 200 (\(spooled) spooled), "
                + "delivered \(Set(ids).count), duplicates \(ids.count - Set(ids).count), lost \(accepted.count - Set(ids).count)")
        #expect(accepted.count > 0)
        #expect(Set(ids).count == accepted.count)
        last.signal(SIGTERM)
        #expect(try await last.waitForExit() == 0)
    }
}

// MARK: - Helpers

func waitForHealthy(_ bridge: BridgeProcess, timeout: Duration = .seconds(30)) async throws {
    try await waitUntil(timeout: timeout, "bridge connected to the broker") {
        (try? await httpRequest(port: bridge.port, method: .get, path: "/health").status) == 200
    }
}

/// The spool depth the bridge reports on /health.
func spoolRecords(_ bridge: BridgeProcess) async throws -> Int {
    let health = try await httpRequest(port: bridge.port, method: .get, path: "/health")
    let value = try JSONParser().parse(Array(health.body.utf8))
    return Int(value["spool"]?["records"]?.int64Value ?? -1)
}

/// A bounded stream of distinct signed webhooks from a few concurrent senders.
final class WebhookStream: Sendable {
    struct Report {
        var sent: Int
        var accepted: Int
        var spooled: Int
        var fiveHundreds: Int
        var connectionErrors: Int
        var delivered: Int
        var duplicates: Int
    }

    private struct State {
        var accepted: [String] = []
        var spooled = 0
        var fiveHundreds = 0
        var connectionErrors = 0
        var sent = 0
    }

    let port: Int
    let workers: Int
    let requestTimeout: Duration
    private let state = Mutex(State())
    private let stopFlag = Mutex(false)

    init(port: Int, workers: Int = 4, requestTimeout: Duration = .seconds(15)) {
        self.port = port
        self.workers = workers
        self.requestTimeout = requestTimeout
    }

    var accepted: [String] { state.withLock { $0.accepted } }
    var spooledCount: Int { state.withLock { $0.spooled } }
    var fiveHundredCount: Int { state.withLock { $0.fiveHundreds } }

    /// Streams until `scenario` returns (at most 20,000 requests per sender), then stops the senders.
    func run(stopOnConnectionError: Bool = false, scenario: () async throws -> Void) async throws {
        let senders = (0..<workers).map { worker in
            Task {
                for sequence in 0..<20_000 {
                    if stopFlag.withLock({ $0 }) { return }
                    let body = Webhooks.body(actions: ["FAULT_STREAM"], subjectID: worker * 100_000 + sequence, marker: UUID().uuidString)
                    do {
                        let response = try await postSignedWithTimeout(body)
                        state.withLock { state in
                            state.sent += 1
                            if response.status == 200 {
                                state.accepted.append("\(sha256Hex(body))-0")
                                if response.body.contains("spooled") { state.spooled += 1 }
                            } else if response.status >= 500 {
                                state.fiveHundreds += 1
                            }
                        }
                    } catch {
                        state.withLock {
                            $0.sent += 1
                            $0.connectionErrors += 1
                        }
                        if stopOnConnectionError { return }
                    }
                }
            }
        }
        do {
            try await scenario()
        } catch {
            stopFlag.withLock { $0 = true }
            for sender in senders { await sender.value }
            throw error
        }
        stopFlag.withLock { $0 = true }
        for sender in senders { await sender.value }
    }

    private func postSignedWithTimeout(_ body: [UInt8]) async throws -> (status: Int, body: String) {
        try await withThrowingTaskGroup(of: (status: Int, body: String).self) { group in
            group.addTask { try await postSigned(port: self.port, body: body) }
            group.addTask {
                try await Task.sleep(for: self.requestTimeout)
                throw TimedOut(what: "response (the sender gives up)", timeout: self.requestTimeout)
            }
            defer { group.cancelAll() }
            return try await group.next()!
        }
    }

    /// Waits until every accepted event is on the probe's queue; prints and returns the counts.
    func verifyDelivered(to probe: QueueProbe, name: String) async throws -> Report {
        let accepted = Set(self.accepted)
        try await waitUntil(timeout: .seconds(90), "all \(accepted.count) accepted events delivered") {
            accepted.isSubset(of: Set(probe.messages.compactMap(\.properties.messageID)))
        }
        let ids = probe.messages.compactMap(\.properties.messageID).filter { accepted.contains($0) }
        let snapshot = state.withLock { $0 }
        let report = Report(
            sent: snapshot.sent, accepted: accepted.count, spooled: snapshot.spooled, fiveHundreds: snapshot.fiveHundreds,
            connectionErrors: snapshot.connectionErrors, delivered: Set(ids).count, duplicates: ids.count - Set(ids).count)
        print(
            "fault \(name): sent \(report.sent) / 2xx \(report.accepted) (spooled \(report.spooled)) / 5xx \(report.fiveHundreds) / "
                + "connection errors \(report.connectionErrors) / delivered \(report.delivered) / duplicates \(report.duplicates) / lost \(report.accepted - report.delivered)")
        return report
    }
}

/// Posts fresh bodies until one is answered as published straight to the broker, at most three: a
/// confirm slower than the faults' 1 s timeout on a loaded machine answers "spooled" instead, once
/// in a while, not three times in a row.
func expectPublishedStraightAway(port: Int, action: String, sourceLocation: SourceLocation = #_sourceLocation) async throws {
    var answers: [String] = []
    for _ in 0..<3 {
        let response = try await postSigned(port: port, body: Webhooks.body(actions: [action]))
        if response.status == 200, response.body == "{\"events\":1}\n" { return }
        answers.append("\(response.status) \(response.body)")
    }
    Issue.record("never published straight to the broker: \(answers)", sourceLocation: sourceLocation)
}
