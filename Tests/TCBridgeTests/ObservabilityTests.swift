import Foundation
import HTTPTypes
import Testing
import TestSupport

@testable import TCBridge

/// The real executable's `/metrics`, its one log line per request, and `tc-bridge probe`.
@Suite struct ObservabilityTests {
    @Test func metricsCountRequestsByOutcomeAndEventsByActionAndExportTheState() async throws {
        let exchange = "metrics-\(UUID().uuidString.prefix(8))"
        let probe = try await QueueProbe(exchange: exchange)
        defer { Task { await probe.stop() } }
        let bridge = try await BridgeProcess(
            node: .shared, arguments: ["--exchange", exchange], environment: ["TC_BRIDGE_LOG_LEVEL": "info", "TC_BRIDGE_LOG_FORMAT": "json"],
            captureStandardError: true)
        try await waitUntil("bridge healthy") {
            (try? await httpRequest(port: bridge.port, method: .get, path: "/health").status) == 200
        }
        let body = Webhooks.body(actions: ["RAISED_INVOICE", "NOT_IN_THE_CATALOGUE"], subjectID: 7)
        #expect(try await postSigned(port: bridge.port, body: body).status == 200)
        #expect(try await postSigned(port: bridge.port, body: body).status == 200, "a duplicate")
        var headers = HTTPFields()
        headers[HTTPField.Name("webhook-signature")!] = String(repeating: "0", count: 64)
        #expect(try await httpRequest(port: bridge.port, headers: headers, body: body).status == 403)

        let metrics = try await httpRequest(port: bridge.port, method: .get, path: "/metrics")
        #expect(metrics.status == 200)
        let text = metrics.body
        #expect(text.contains(#"tcbridge_webhooks_total{outcome="published"} 1"#), "\(text)")
        #expect(text.contains(#"tcbridge_webhooks_total{outcome="duplicate"} 1"#))
        #expect(text.contains(#"tcbridge_webhooks_total{outcome="signature_mismatch"} 1"#))
        #expect(text.contains(#"tcbridge_events_total{action="RAISED_INVOICE"} 1"#))
        #expect(text.contains(#"tcbridge_events_total{action="other"} 1"#), "actions outside the catalogue share one label")
        #expect(text.contains("tcbridge_messages_published_total 2"))
        #expect(text.contains("tcbridge_broker_connected 1"))
        #expect(text.contains("tcbridge_spool_records 0"))
        #expect(text.contains("tcbridge_dedup_entries 1"))
        #expect(text.contains("tcbridge_request_duration_seconds_bucket"))
        #expect(text.contains("tcbridge_publish_confirm_duration_seconds_count 1"))
        // Every metric /metrics shows is one the dashboard and the alert rules may use.
        let exported = Set(
            text.split(separator: "\n").filter { !$0.hasPrefix("#") }.compactMap { line in
                line.split(whereSeparator: { $0 == "{" || $0 == " " }).first.map { String($0).replacing(/_(bucket|sum|count)$/, with: "") }
            })
        #expect(exported.isSubset(of: Set(BridgeMetrics.names)), "undocumented: \(exported.subtracting(BridgeMetrics.names))")

        // One JSON line per request, with its request id and outcome; never the body or the key.
        // The log writer's thread and this test's pipe reader each run on their own time: wait for the
        // lines, then require exactly three (a fourth would still fail).
        @Sendable func webhookLines() -> [Substring] {
            bridge.standardError.split(separator: "\n").filter { $0.contains(#""message":"webhook""#) }
        }
        try await waitUntil("the three request lines logged") { webhookLines().count >= 3 }
        let lines = webhookLines()
        #expect(lines.count == 3, "\(bridge.standardError)")
        let objects = try lines.map { try #require(try JSONSerialization.jsonObject(with: Data($0.utf8)) as? [String: Any]) }
        #expect(objects.map { $0["outcome"] as? String } == ["published", "duplicate", "signature_mismatch"])
        #expect(objects.allSatisfy { ($0["request_id"] as? String)?.isEmpty == false })
        #expect(objects[0]["events"] as? String == "2")
        #expect(objects[0]["actions"] as? String == "RAISED_INVOICE,NOT_IN_THE_CATALOGUE")
        #expect(!bridge.standardError.contains(Webhooks.testKey))
        #expect(!bridge.standardError.contains(String(decoding: body.prefix(60), as: UTF8.self)), "no payload in the log")
        _ = try await probe.waitForMessages(count: 2)
    }

    @Test func probeExitsZeroWhenReadyAndOneWithoutABridge() async throws {
        let bridge = try await BridgeProcess(node: .shared)
        try await waitUntil("bridge ready") {
            (try? await httpRequest(port: bridge.port, method: .get, path: "/ready").status) == 200
        }
        let ready = try await runBridgeCommand(["probe", "--port", String(bridge.port)])
        #expect(ready.status == 0 && !ready.timedOut, "\(ready.output)")
        let nothing = try await runBridgeCommand(["probe", "--port", String(try unusedPort()), "--timeout", "1"])
        #expect(nothing.status == 1 && !nothing.timedOut)
        #expect(nothing.output.contains("no answer"))
    }

    @Test func statusLinesAreParsedStrictly() {
        #expect(ProbeStatus.parse(Array("HTTP/1.1 200 OK\r\n".utf8)) == 200)
        #expect(ProbeStatus.parse(Array("HTTP/1.0 503 Service Unavailable".utf8)) == 503)
        #expect(ProbeStatus.parse(Array("HTTP/2 200".utf8)) == nil)
        #expect(ProbeStatus.parse(Array("HTTP/1.1 2x0 OK".utf8)) == nil)
        #expect(ProbeStatus.parse([]) == nil)
    }
}

/// A TCP port nothing listens on (bound, then released).
func unusedPort() throws -> Int {
    let descriptor = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
    defer { close(descriptor) }
    var address = sockaddr_in()
    address.sin_family = sa_family_t(AF_INET)
    address.sin_addr.s_addr = in_addr_t(UInt32(0x7F00_0001).bigEndian)
    var length = socklen_t(MemoryLayout<sockaddr_in>.size)
    _ = withUnsafePointer(to: &address) { $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { bind(descriptor, $0, length) } }
    _ = withUnsafeMutablePointer(to: &address) { $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { getsockname(descriptor, $0, &length) } }
    return Int(UInt16(bigEndian: address.sin_port))
}
