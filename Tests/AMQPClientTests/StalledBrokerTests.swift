@_spi(Testing) import AMQPClient
import Foundation
import Logging
import Synchronization
import TestSupport
import Testing

/// A broker that stops reading (frozen with SIGSTOP) must not freeze the publisher: rabbitmq-c 0.11
/// blocks in a full socket write forever, so each call's deadline and the stalled-write watchdog
/// must get callers answered and the connection torn down.
@Suite(.serialized) struct StalledBrokerTests {
    @Test func frozenBrokerFailsPublishesWithinTheirDeadlineAndThePublisherRecovers() async throws {
        try await RabbitMQNode.withDedicated(name: "stall", port: 5694) { node in
            var connection = node.connection
            connection.heartbeat = .seconds(60)  // rule heartbeats out: only the watchdog can notice
            let exchange = "stall-\(UUID().uuidString.prefix(8))"
            let probe = try await QueueProbe(node: node, exchange: exchange)
            defer { Task { await probe.stop() } }
            let configuration = AMQPPublisherConfiguration(
                connection: connection, exchanges: [.init(name: exchange, mode: .declareIfMissing)],
                confirmTimeout: .seconds(1), reconnectBackoff: .init(initial: .milliseconds(50), maximum: .milliseconds(500)))
            try await withPublisher(configuration) { publisher in
                try await waitUntil("publisher connected") { publisher.state == .connected }
                try await node.pause()
                // 1 MiB messages until the socket buffers are full and a write blocks.
                let big = message(exchange: exchange, key: "BIG", body: String(repeating: "x", count: 1 << 20))
                let outcomes = Recorder<AMQPError.Kind>()
                try await withThrowingTaskGroup(of: Void.self) { group in
                    for _ in 0..<32 {
                        group.addTask {
                            do {
                                try await publisher.publish([big])
                            } catch let error as AMQPError {
                                outcomes.append(error.kind)
                            }
                        }
                    }
                    try await group.waitForAll()
                }
                // Every caller was answered (the group finished) with a failure, not left hanging.
                #expect(outcomes.count == 32)
                // The watchdog aborted the stuck socket: the owner thread is free and reconnecting.
                try await waitUntil(timeout: .seconds(20), "publisher to give up the stalled connection") {
                    if case .disconnected = publisher.state { return true }
                    return false
                }
                try await node.resume()
                try await waitUntil(timeout: .seconds(60), "publisher reconnected") { publisher.state == .connected }
                try await publisher.publish([message(exchange: exchange, key: "AFTER", body: "recovered")])
            }
            try await waitUntil(timeout: .seconds(30), "post-recovery message") { probe.messages.contains { $0.routingKey == "AFTER" } }
        }
    }

    /// The caller's own write (owner waiting idle) fails on a broken socket: the call is answered
    /// `.connectionLost`, the owner drops the connection and connects again. The broker is frozen
    /// so that only the caller's write can notice the break.
    @Test func aCallersWriteOnABrokenSocketFailsTheCallAndThePublisherReconnects() async throws {
        try await RabbitMQNode.withDedicated(name: "stall", port: 5694) { node in
            var connection = node.connection
            connection.heartbeat = .seconds(60)
            let exchange = "broken-\(UUID().uuidString.prefix(8))"
            let probe = try await QueueProbe(node: node, exchange: exchange)
            defer { Task { await probe.stop() } }
            let configuration = AMQPPublisherConfiguration(
                connection: connection, exchanges: [.init(name: exchange, mode: .declareIfMissing)],
                reconnectBackoff: .init(initial: .milliseconds(50), maximum: .milliseconds(500)))
            try await withPublisher(configuration) { publisher in
                try await waitUntil("publisher connected") { publisher.state == .connected }
                try await waitUntil("owner waiting idle") { publisher.ownerWaitsIdle }
                let before = publisher.callerWriteCount
                try await node.pause()
                try await waitUntil("socket broken while the owner waits") { publisher.breakSendingSideWhileOwnerWaits() }
                // Once the broker's kernel has acknowledged our FIN the socket looks quiet: only a write can tell.
                try await waitUntil("socket quiet again") { publisher.ownerSocketIsQuiet }
                let error = await #expect(throws: AMQPError.self) {
                    try await publisher.publish([message(exchange: exchange, key: "LOST", body: "lost")])
                }
                #expect(error?.kind == .connectionLost)
                #expect(publisher.callerWriteCount == before + 1)  // the caller's write, not the owner's
                try await node.resume()
                try await waitUntil(timeout: .seconds(60), "publisher reconnected") {
                    (try? await publisher.publish([message(exchange: exchange, key: "AFTER", body: "after")])) != nil
                }
            }
            try await waitUntil(timeout: .seconds(30), "post-recovery message") { probe.messages.contains { $0.routingKey == "AFTER" } }
            #expect(!probe.messages.contains { $0.routingKey == "LOST" })
        }
    }
}
