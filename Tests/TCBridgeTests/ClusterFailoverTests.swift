import AMQPClient
import Foundation
import Logging
import Synchronization
import Testing
import TestSupport
import TutorCruncherConsumer

/// A real three-node RabbitMQ cluster on loopback: the node the bridge and the consumer are
/// connected to stops mid-stream; both fail over to another node, the quorum queues keep every
/// confirmed event, and nothing the bridge answered 200 is lost.
@Suite(.serialized) struct ClusterFailoverTests {
    /// Starts three fresh nodes, joins the second and third to the first (seconds of blocking work:
    /// on a thread of its own), runs `body` with them, and stops them on every path.
    static func withCluster(_ body: ([RabbitMQNode]) async throws -> Void) async throws {
        let nodes = zip(["cluster-1", "cluster-2", "cluster-3"], [5675, 5676, 5677]).map { RabbitMQNode(name: $0, port: $1) }
        try await RabbitMQNode.stopping(nodes) {
            try await onOwnThread {
                for node in nodes {
                    try? node.stop()
                    try? FileManager.default.removeItem(atPath: Repository.stateDirectory + "/rabbitmq-\(node.name)")
                }
                for node in nodes { try node.start() }
                for node in nodes.dropFirst() {
                    _ = try runProcess(Repository.root + "/scripts/rabbitmq", ["join", "--name", node.name, "--cluster-with", nodes[0].name])
                }
            }
            try await body(nodes)
        }
    }

    @Test func bridgeAndConsumerFailOverWhenTheirNodeStopsAndQuorumQueuesLoseNothing() async throws {
        try await Self.withCluster { nodes in
            let urls = nodes.map(\.url)
            let exchange = "cluster-\(UUID().uuidString.prefix(8))"
            let queue = "cluster-consumer-\(UUID().uuidString.prefix(8))"

            // The consumer library on a quorum queue, preferring the first node.
            var configuration = try TutorCruncherConsumerConfiguration(url: urls.joined(separator: ","), exchange: exchange, queue: queue)
            configuration.queueType = .quorum
            configuration.retryPolicy.initialDelay = .zero  // no wait queues: the test counts the queues
            configuration.reconnectBackoff = AMQPBackoff(initial: .milliseconds(50), maximum: .milliseconds(500))
            var logger = Logger(label: "cluster-consumer")
            logger.logLevel = .critical
            let delivered = Shared<Set<String>>([])
            let processor = TutorCruncherEventProcessor(configuration: configuration, logger: logger) { event in
                delivered.update { _ = $0.insert(event.eventID) }
            }
            let consuming = Task { try await processor.run() }
            defer { consuming.cancel() }
            let survivor = AMQPAdmin(connection: nodes[1].connection)
            try await waitUntil(timeout: .seconds(60), "consumer subscribed") { (try? await survivor.consumerCount(queue: queue)) == 1 }

            let bridge = try await BridgeProcess(
                node: nodes[0],
                arguments: urls.flatMap { ["--amqp-url", $0] } + ["--exchange", exchange, "--unroutable-queue-type", "quorum"],
                environment: ["TC_BRIDGE_LOG_LEVEL": "warning", "TC_BRIDGE_LOG_FORMAT": "text"], captureStandardError: true)
            try await bridge.waitUntilHealthy(timeout: .seconds(60))

            let outcome = OutcomeLog()
            let stop = Shared(false)
            let stopped = Shared<Int?>(nil)  // 2xx answers when the node's stop began
            try await withThrowingTaskGroup(of: Void.self) { group in
                for worker in 0..<4 {
                    group.addTask {
                        var sequence = 0
                        while !stop.value, !Task.isCancelled {
                            let body = Webhooks.body(actions: ["CLUSTER_TEST"], subjectID: worker * 1_000_000 + sequence)
                            sequence += 1
                            do {
                                let response = try await postSigned(port: bridge.port, body: body)
                                outcome.record(status: response.status, body: body)
                            } catch {
                                outcome.recordConnectionFailure()
                            }
                        }
                    }
                }
                group.addTask {
                    try await waitUntil(timeout: .seconds(60), "some events accepted") { outcome.okCount >= 300 }
                    // A quorum queue starts its members on the other nodes after its declaration returns:
                    // stop a node only once every queue has all three online (in production queues are
                    // not seconds old; stopping earlier tests a queue with fewer than three members).
                    try await waitUntil(timeout: .seconds(60), "every quorum queue with three members online") {
                        let listing = (try? await nodes[1].ctl("list_queues", "name", "online", "--no-table-headers")) ?? ""
                        let lines = listing.split(separator: "\n").filter { $0.contains(exchange) || $0.contains(queue) }
                        return lines.count == 3 && lines.allSatisfy { $0.components(separatedBy: "@localhost").count - 1 == 3 }
                    }
                    stopped.update { $0 = outcome.okCount }
                    try await nodes[0].stop()  // the node both are connected to
                    let before = outcome.okCount
                    try await waitUntil(timeout: .seconds(90), "events accepted after the stop") { outcome.okCount >= before + 300 }
                    stop.update { $0 = true }
                }
                try await group.waitForAll()
            }

            let accepted = outcome.acceptedEventIDs
            do {
                try await waitUntil(timeout: .seconds(90), "every accepted event delivered") { accepted.isSubset(of: delivered.value) }
            } catch {
                // The counts below say how many; the expectation records the failure.
            }
            let got = delivered.value
            let lost = accepted.subtracting(got)
            if !lost.isEmpty {
                // What the survivors say about the queues, for the log of a failing run.
                for node in nodes.dropFirst() {
                    let queues = (try? await onOwnThread {
                        try node.ctl("list_queues", "name", "type", "leader", "online", "messages_ready", "messages_unacknowledged", "consumers")
                    }) ?? "(list_queues failed)"
                    print("queues on \(node.name):\n\(queues)")
                }
                let consumers = (try? await nodes[1].ctl("list_consumers", "queue_name", "channel_pid", "prefetch_count")) ?? ""
                print("consumers:\n\(consumers)")
                let record = (try? await onOwnThread {
                    try nodes[1].ctl("eval", "rabbit_amqqueue:lookup(rabbit_misc:r(<<\"/\">>, queue, <<\"\(queue)\">>)).")
                }) ?? ""
                print("queue record:\n\(record)")
                let status = (try? await onOwnThread {
                    try nodes[1].ctl("eval", "rabbit_quorum_queue:status(<<\"/\">>, <<\"\(queue)\">>).")
                }) ?? ""
                print("quorum status:\n\(status)")
                print("bridge log (end):\n\(bridge.standardError.suffix(6_000))")
            }
            // RabbitMQ 3.10 can leave the bridge's new channel on a survivor rejecting every publish
            // (its quorum queue client still aims at the stopped leader); the publisher replaces the
            // connection after nacks in a row, and the forwarder does not count nacks against records.
            let freshChannels = bridge.standardError.components(separatedBy: "messages in a row; reconnecting").count - 1
            print(
                "cluster failover: sent \(outcome.sentCount) / 2xx \(accepted.count) (\(stopped.value ?? 0) before the stop began) "
                    + "/ reconnects for a fresh channel \(freshChannels) "
                    + "/ non-2xx \(outcome.nonOKStatuses.count) / connection errors \(outcome.connectionFailureCount) / delivered \(got.intersection(accepted).count) / lost \(lost.count)")
            #expect(lost.count == 0, "lost \(lost.count) of \(accepted.count), e.g. \(lost.prefix(3))")
            #expect(outcome.nonOKStatuses.isEmpty, "\(outcome.nonOKStatuses.prefix(5))")
            bridge.signal(SIGTERM)
            _ = try await bridge.waitForExit()
        }
    }
}

/// A value shared between tasks. Thread-safe.
private final class Shared<Value: Sendable>: Sendable {
    private let mutex: Mutex<Value>
    init(_ value: Value) { mutex = Mutex(value) }
    var value: Value { mutex.withLock { $0 } }
    func update(_ body: (inout Value) -> Void) { mutex.withLock { body(&$0) } }
}
