import AMQPClient
import Foundation
import TestSupport
import Testing
import TutorCruncher

/// A really full disk: the real `tc-bridge` spooling (broker down) onto a 2 MiB tmpfs this test
/// mounts (root only; skipped otherwise). Once nothing more can be made durable requests get 503;
/// every request answered 200 is delivered when the broker returns; spooling works again as soon
/// as space returns. Prints: sent / 2xx / 5xx / delivered / lost.
@Suite(.serialized) struct DiskFullTests {
    static let node = RabbitMQNode(name: "diskfull", port: 5699)

    @Test(.enabled(if: getuid() == 0, "mounting a small tmpfs needs root"))
    func aFullDiskAnswers503LosesNothingAndServiceResumesWhenSpaceReturns() async throws {
        let mountPoint = NSTemporaryDirectory() + "tc-bridge-disk-full-\(UUID().uuidString)"
        try FileManager.default.createDirectory(atPath: mountPoint, withIntermediateDirectories: true)
        guard (try? await runProcess("/bin/mount", ["-t", "tmpfs", "-o", "size=2m", "tmpfs", mountPoint])) != nil else {
            print("disk full: cannot mount a tmpfs here; not run")
            return
        }
        let outcome: Result<Void, any Error>
        do {
            try await RabbitMQNode.stopping([Self.node]) { try await fillAndFreeTheDisk(mountedAt: mountPoint) }
            outcome = .success(())
        } catch {
            outcome = .failure(error)
        }
        _ = try? await runProcess("/bin/umount", ["-l", mountPoint])
        try outcome.get()
    }

    private func fillAndFreeTheDisk(mountedAt mountPoint: String) async throws {
        // Ballast the test removes later: the space that "returns".
        let ballast = mountPoint + "/ballast"
        #expect(FileManager.default.createFile(atPath: ballast, contents: Data(count: 1 << 20)))

        try await Self.node.start()
        let exchange = "disk-full-\(UUID().uuidString.prefix(8))"
        let probe = try await QueueProbe(node: Self.node, exchange: exchange)
        defer { Task { await probe.stop() } }
        try await Self.node.stop()
        let bridge = try await BridgeProcess(
            node: Self.node, arguments: ["--exchange", exchange, "--spool-dir", mountPoint + "/spool", "--confirm-timeout", "1"],
            environment: ["TC_BRIDGE_LOG_LEVEL": "critical"])
        let stream = WebhookStream(port: bridge.port)
        try await stream.run {
            try await waitUntil(timeout: .seconds(120), "the disk fills and 503s follow") { stream.fiveHundredCount >= 20 }
        }
        #expect(stream.accepted.count > 10)
        #expect(stream.fiveHundredCount >= 20)

        // Space returns (the broker is still down): spooling works again.
        try FileManager.default.removeItem(atPath: ballast)
        let afterSpace = try await postSigned(port: bridge.port, body: Webhooks.body(actions: ["AFTER_SPACE_RETURNED"]))
        #expect(afterSpace.status == 200)
        #expect(afterSpace.body == "{\"events\":1,\"spooled\":true}\n")

        try await Self.node.start()
        try await waitForHealthy(bridge, timeout: .seconds(60))
        let report = try await stream.verifyDelivered(to: probe, name: "disk full (2 MiB tmpfs)")
        #expect(report.accepted == report.delivered)
        try await waitUntil(timeout: .seconds(60), "spool drained") { try await spoolRecords(bridge) == 0 }
        try await waitUntil("the record spooled after space returned") {
            probe.messages.contains { $0.routingKey == "AFTER_SPACE_RETURNED" }
        }
        // Straight to the broker again.
        try await expectPublishedStraightAway(port: bridge.port, action: "AFTER_THE_DISK_FILLED")
        bridge.signal(SIGTERM)
        #expect(try await bridge.waitForExit() == 0)
    }
}
