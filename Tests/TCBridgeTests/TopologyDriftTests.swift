import AMQPClient
import Foundation
import HTTPTypes
import TestSupport
import Testing

/// Topology that exists with other arguments never stops publishing; a configuration the broker
/// refuses makes `/ready` 503.
@Suite struct TopologyDriftTests {
    @Test func unroutableQueueWithAnotherMaxLengthIsUsedAsItIsWithAWarning() async throws {
        let exchange = "drift-\(UUID().uuidString.prefix(8))"
        let unroutable = "\(exchange).unroutable"
        let admin = AMQPAdmin(connection: RabbitMQNode.shared.connection)
        defer { Task { _ = try? await admin.deleteQueue(unroutable) } }

        let first = try await BridgeProcess(node: .shared, arguments: ["--exchange", exchange, "--unroutable-max-length", "1000"])
        try await first.waitUntilHealthy()
        first.signal(SIGTERM)
        #expect(try await first.waitForExit() == 0)

        let second = try await BridgeProcess(
            node: .shared, arguments: ["--exchange", exchange, "--unroutable-max-length", "2000"], captureStandardError: true)
        try await second.waitUntilHealthy()
        #expect(try await httpRequest(port: second.port, method: .get, path: "/ready").status == 200)
        // It publishes: an event no service is bound for reaches the existing unroutable queue.
        #expect(try await postSigned(port: second.port, body: Webhooks.body(actions: ["CREATED_A_CLIENT"])).status == 200)
        try await waitUntil("event in the unroutable queue") { try await admin.messageCount(queue: unroutable) == 1 }
        try await waitUntil("warning logged") { second.standardError.contains("using the existing queue as it is") }
        #expect(second.standardError.contains(unroutable))
        #expect(second.standardError.contains("x-max-length"))
        // The queue keeps the arguments it was created with.
        let queues = try await RabbitMQNode.shared.ctl("list_queues", "name", "arguments", "--no-table-headers", "--quiet")
        let line = queues.split(separator: "\n").first { $0.hasPrefix(unroutable + "\t") }
        #expect(line?.contains("1000") == true, "\(line ?? "queue not listed")")
        second.signal(SIGTERM)
        #expect(try await second.waitForExit() == 0)
    }

    @Test func alternateExchangeOfAnotherKindIsUsedAsItIsWithAWarning() async throws {
        let exchange = "drift-\(UUID().uuidString.prefix(8))"
        let alternate = "\(exchange).unroutable"
        let admin = AMQPAdmin(connection: RabbitMQNode.shared.connection)
        defer { Task { _ = try? await admin.deleteQueue(alternate) } }
        // Someone created the alternate exchange as a topic exchange, not a fanout.
        try await admin.declare(exchanges: [AMQPExchangeDeclaration(name: alternate, kind: .topic, durable: true)])

        let bridge = try await BridgeProcess(node: .shared, arguments: ["--exchange", exchange], captureStandardError: true)
        try await bridge.waitUntilHealthy()
        #expect(try await httpRequest(port: bridge.port, method: .get, path: "/ready").status == 200)
        let probe = try await QueueProbe(exchange: exchange, bindingKeys: ["RAISED_INVOICE"])
        defer { Task { await probe.stop() } }
        #expect(try await postSigned(port: bridge.port, body: Webhooks.body(actions: ["RAISED_INVOICE"])).status == 200)
        #expect(try await probe.waitForMessages(count: 1).count == 1)
        try await waitUntil("warning logged") { bridge.standardError.contains("using the existing exchange as it is") }
        #expect(bridge.standardError.contains(alternate))
        bridge.signal(SIGTERM)
        #expect(try await bridge.waitForExit() == 0)
    }

    @Test func readyIs503WhileTheBrokerRefusesTheBridgesCredentials() async throws {
        let exchange = "refused-\(UUID().uuidString.prefix(8))"
        let url = "amqp://guest:not-the-password@127.0.0.1:\(RabbitMQNode.shared.port)/%2F"
        // Its shutdown may have to wait for a login attempt under way; the broker holds a refused
        // one for seconds, and under the whole suite's load a CI run once took over the default
        // 30 s deadline. A shutdown that hangs still fails this test, at 90 s.
        let bridge = try await BridgeProcess(
            node: .shared, arguments: ["--exchange", exchange, "--shutdown-deadline", "90"],
            environment: ["AMQP_URL": url, "TC_BRIDGE_LOG_LEVEL": "critical"])
        // The spool could accept webhooks, but nothing accepted would ever be published.
        try await waitUntil("/ready is 503") {
            try await httpRequest(port: bridge.port, method: .get, path: "/ready").status == 503
        }
        let ready = try await httpRequest(port: bridge.port, method: .get, path: "/ready")
        #expect(ready.body.contains("refuses the bridge's configuration"))
        let health = try await httpRequest(port: bridge.port, method: .get, path: "/health")
        #expect(health.status == 503)
        #expect(health.body.contains("misconfigured"))
        bridge.signal(SIGTERM)
        #expect(try await bridge.waitForExit(timeout: .seconds(100)) == 0)
    }
}
