import AMQPClient
import Foundation
import HTTPTypes
import TestSupport
import NIOPosix
import Testing
import TutorCruncherSignature

/// Tests that stop or restart a broker; each uses a node of its own.
@Suite(.serialized) struct BrokerOutageTests {
    @Test func healthFollowsTheBrokerAndPublishingResumesWithoutRestart() async throws {
        try await RabbitMQNode.withDedicated(name: "health", port: 5691) { node in
            let exchange = "outage-\(UUID().uuidString.prefix(8))"
            let probe = try await QueueProbe(node: node, exchange: exchange)
            defer { Task { await probe.stop() } }
            let before = Webhooks.body(actions: ["BEFORE_OUTAGE"])
            let during = Webhooks.body(actions: ["DURING_OUTAGE"])
            let after = Webhooks.body(actions: ["AFTER_OUTAGE"])

            try await withLiveBridge(node: node, exchange: exchange) { port, publisher in
                let healthUp = try await httpRequest(port: port, method: .get, path: "/health")
                #expect(healthUp.status == 200)
                let first = try await postSigned(port: port, body: before)
                #expect(first.status == 200)

                try await node.stop()
                try await waitUntil("/health to report 503") {
                    try await httpRequest(port: port, method: .get, path: "/health").status == 503
                }
                let refused = try await postSigned(port: port, body: during)
                #expect(refused.status == 503)

                try await node.start()
                try await waitUntil(timeout: .seconds(60), "/health to report 200 again") {
                    try await httpRequest(port: port, method: .get, path: "/health").status == 200
                }
                let resumed = try await postSigned(port: port, body: after)
                #expect(resumed.status == 200)
            }
            // The durable probe queue and persistent messages survive the restart.
            let received = try await probe.waitForMessages(count: 2, timeout: .seconds(60))
            #expect(received.map(\.routingKey) == ["BEFORE_OUTAGE", "AFTER_OUTAGE"])
        }
    }
}

/// The real executable under signals.
@Suite struct GracefulShutdownTests {
    @Test(arguments: [SIGTERM, SIGINT])
    func signalWithRequestsInFlightLosesNoneAndExitsZero(signal: Int32) async throws {
        let exchange = "sigterm-\(UUID().uuidString.prefix(8))"
        let probe = try await QueueProbe(exchange: exchange)
        defer { Task { await probe.stop() } }
        let bridge = try await BridgeProcess(node: .shared, arguments: ["--exchange", exchange])
        try await waitUntil("bridge healthy") {
            (try? await httpRequest(port: bridge.port, method: .get, path: "/health").status) == 200
        }

        let outcome = OutcomeLog()
        let workers = 8
        try await withThrowingTaskGroup(of: Void.self) { group in
            for worker in 0..<workers {
                group.addTask {
                    for sequence in 0..<2000 {
                        let body = Webhooks.body(actions: ["SHUTDOWN_TEST"], subjectID: worker * 10_000 + sequence)
                        do {
                            let response = try await postSigned(port: bridge.port, body: body)
                            outcome.record(status: response.status, body: body)
                        } catch {
                            outcome.recordConnectionFailure()
                            return  // the listener is closed: the sender would retry later
                        }
                    }
                }
            }
            group.addTask {
                try await waitUntil("some requests answered") { outcome.okCount >= 100 }
                bridge.signal(signal)
                outcome.markSignalSent()
            }
            try await group.waitForAll()
        }

        #expect(try await bridge.waitForExit() == 0)
        #expect(outcome.nonOKStatuses.isEmpty, "in-flight requests must finish with 200: \(outcome.nonOKStatuses)")
        // An event the bridge spooled (the broker was slow to confirm) is delivered by its next run,
        // from the same spool: count it as delivered only then, never as lost.
        let next = try await BridgeProcess(node: .shared, arguments: ["--exchange", exchange], spoolDirectory: bridge.spoolDirectory)
        let accepted = outcome.acceptedEventIDs
        // By ID, not by count: an event published and then spooled too (its confirm came late)
        // arrives twice.
        func deliveredIDs() -> Set<String> { Set(probe.messages.compactMap(\.properties.messageID)) }
        try? await waitUntil("every accepted event delivered") {
            probe.messages.count >= accepted.count && accepted.isSubset(of: deliveredIDs())
        }
        next.signal(SIGTERM)
        #expect(try await next.waitForExit() == 0)
        let delivered = deliveredIDs()
        #expect(accepted.isSubset(of: delivered), "lost \(accepted.subtracting(delivered).count) of \(accepted.count)")
        print("signal \(signal): sent \(outcome.sentCount), 2xx \(accepted.count) (\(outcome.okAfterSignal) after the signal), delivered \(delivered.count)")
    }
}

/// A graceful shutdown still running at the deadline ends with status 70. The deadline here is
/// 1 ms, and a request whose body stops coming (the server waits for it up to its body timeout of
/// 10 s) keeps the shutdown running well past it.
@Suite struct ShutdownDeadlineTests {
    @Test func aShutdownThatDoesNotFinishInTimeExitsWithStatus70() async throws {
        let bridge = try await BridgeProcess(
            node: .shared, arguments: ["--exchange", "deadline-\(UUID().uuidString.prefix(8))"],
            environment: ["TC_BRIDGE_SHUTDOWN_DEADLINE": "0.001"], captureStandardError: true)
        try await waitUntil("bridge healthy") {
            (try? await httpRequest(port: bridge.port, method: .get, path: "/health").status) == 200
        }
        let head = "POST /webhook HTTP/1.1\r\nHost: localhost\r\nContent-Length: 1000\r\n"
            + "webhook-signature: \(HostileConnection.wrongSignature)\r\n\r\n0123456789"
        let stalled = try await HostileConnection.open(.raw(Array(head.utf8), thenPush: 0), port: bridge.port, group: .singleton)
        defer { stalled.close() }
        try await waitUntil("the stalled connection accepted") {
            let metrics = (try? await httpRequest(port: bridge.port, method: .get, path: "/metrics").body) ?? ""
            // This request's connection and the stalled one, at least.
            return metrics.split(separator: "\n").contains { line in
                line.hasPrefix("tcbridge_connections_open ") && (line.split(separator: " ").last.flatMap { Double($0) } ?? 0) >= 2
            }
        }
        bridge.signal(SIGTERM)
        #expect(try await bridge.waitForExit(timeout: .seconds(30)) == 70)
        #expect(bridge.standardError.contains("graceful shutdown did not finish in time"))
    }
}

final class OutcomeLog: Sendable {
    private struct State {
        var accepted: Set<String> = []
        var nonOK: [Int] = []
        var connectionFailures = 0
        var signalSent = false
        var okAfterSignal = 0
    }

    private let state = Mutex(State())

    func record(status: Int, body: [UInt8]) {
        state.withLock { state in
            if status == 200 {
                state.accepted.insert("\(sha256HexForTests(body))-0")
                if state.signalSent { state.okAfterSignal += 1 }
            } else {
                state.nonOK.append(status)
            }
        }
    }

    func recordConnectionFailure() { state.withLock { $0.connectionFailures += 1 } }
    func markSignalSent() { state.withLock { $0.signalSent = true } }
    var okCount: Int { state.withLock { $0.accepted.count } }
    var okAfterSignal: Int { state.withLock { $0.okAfterSignal } }
    var acceptedEventIDs: Set<String> { state.withLock { $0.accepted } }
    var nonOKStatuses: [Int] { state.withLock { $0.nonOK } }
    var connectionFailureCount: Int { state.withLock { $0.connectionFailures } }
    var sentCount: Int { state.withLock { $0.accepted.count + $0.nonOK.count + $0.connectionFailures } }
}

import Synchronization
import TutorCruncher

func sha256HexForTests(_ bytes: [UInt8]) -> String { sha256Hex(bytes) }
