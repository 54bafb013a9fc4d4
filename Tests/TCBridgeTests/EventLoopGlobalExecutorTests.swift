import Foundation
import TestSupport
import Testing

/// The real executable runs its tasks on NIO's event loops: its start-up line reports where a task
/// started then actually ran (this test process keeps the default executor). The release binary,
/// where NIO's own `dlsym` lookup of the runtime's hook finds nothing, is checked the same way by
/// `scripts/test`'s release smoke run.
@Suite struct EventLoopGlobalExecutorTests {
    @Test func theBridgeRunsSwiftConcurrencyOnNIOsEventLoopsAndServes() async throws {
        let bridge = try await BridgeProcess(node: .shared, environment: ["TC_BRIDGE_LOG_LEVEL": "info", "TC_BRIDGE_LOG_FORMAT": "text"], captureStandardError: true)
        try await waitForHealthy(bridge)
        #expect(try await postSigned(port: bridge.port, body: Webhooks.body(actions: ["ON_AN_EVENT_LOOP"])).status == 200)
        bridge.signal(SIGTERM)
        #expect(try await bridge.waitForExit() == 0)
        let starting = bridge.standardError.split(separator: "\n").first { $0.hasSuffix("starting tc-bridge") }
        #expect(starting?.contains("executor=event-loops") == true, "\(starting ?? "no start-up line")")
    }
}
