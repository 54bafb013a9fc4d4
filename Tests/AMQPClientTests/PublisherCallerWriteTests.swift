@_spi(Testing) import AMQPClient
import Foundation
import Testing
import TestSupport

/// A call made while the owner thread waits idle is written by the calling thread itself (one
/// wake-up fewer per call at low load); everything else goes through the owner's inbox. Either
/// way the owner reads the confirm and answers the call.
@Suite struct PublisherCallerWriteTests {
    let node = RabbitMQNode.shared

    func exchangeName() -> String { "caller-write-\(UUID().uuidString.prefix(8))" }

    @Test func callsOneAtATimeAreWrittenByTheirCallersAndConfirmed() async throws {
        let exchange = exchangeName()
        let probe = try await QueueProbe(exchange: exchange)
        defer { Task { await probe.stop() } }
        let calls = 20
        try await withPublisher(.init(connection: node.connection, exchanges: [.init(name: exchange, mode: .declareIfMissing)])) { publisher in
            try await waitUntil("publisher connected") { publisher.state == .connected }
            for index in 0..<calls {
                try await waitUntil("owner waiting idle on a quiet socket") { publisher.ownerSocketIsQuiet }
                try await publisher.publish([message(exchange: exchange, key: "ONE", body: "one-\(index)")])
            }
            // The owner wakes by itself at least once a second: a call may rarely find it awake.
            #expect(publisher.callerWriteCount >= calls - 2)
        }
        let received = try await probe.waitForMessages(count: calls)
        #expect(received.map { String(decoding: $0.body, as: UTF8.self) } == (0..<calls).map { "one-\($0)" })
    }

    @Test(arguments: [
        ("one message of 15 KiB", [15 << 10], true),
        ("as many small messages as a caller writes", Array(repeating: 10, count: AMQPPublisher.callerWriteMessages), true),
        ("one message more", Array(repeating: 10, count: AMQPPublisher.callerWriteMessages + 1), false),
        ("a body of the limit, which its frames take over it", [AMQPPublisher.callerWriteLimit], false),
        ("a body over the limit", [AMQPPublisher.callerWriteLimit + 1], false),
    ])
    func whoWritesACallDependsOnItsSize(what: String, bodySizes: [Int], callersCall: Bool) async throws {
        let exchange = exchangeName()
        let probe = try await QueueProbe(exchange: exchange)
        defer { Task { await probe.stop() } }
        var calls = 0
        try await withPublisher(.init(connection: node.connection, exchanges: [.init(name: exchange, mode: .declareIfMissing)])) { publisher in
            try await waitUntil("publisher connected") { publisher.state == .connected }
            // The owner may wake (its timer, a heartbeat) between the check and the call, and then
            // writes the call itself: a caller's call gets a few tries.
            repeat {
                try await waitUntil("owner waiting idle on a quiet socket") { publisher.ownerSocketIsQuiet }
                let messages = bodySizes.enumerated().map { index, size in
                    message(exchange: exchange, key: "SIZED", body: String(repeating: "x", count: max(0, size - 6)) + String(format: "%03d%03d", calls, index))
                }
                try await publisher.publish(messages)
                calls += 1
            } while callersCall && publisher.callerWriteCount == 0 && calls < 5
            #expect(publisher.callerWriteCount == (callersCall ? 1 : 0), "\(what)")
        }
        let received = try await probe.waitForMessages(count: bodySizes.count * calls)
        #expect(received.map(\.body.count) == Array((0..<calls).map { _ in bodySizes.map { max(6, $0) } }.joined()))
    }
}

/// A call made while the owner waits for confirms of its own does not wake it: the next confirm
/// does, and the owner takes every call queued by then in one round. A call the owner should
/// have been woken for and was not would not fail: it would wait for the owner's next look (at
/// most its confirm deadline). So the test counts the calls queued without a wake-up instead.
@Suite struct PublisherDeferredWakeupTests {
    let node = RabbitMQNode.shared

    @Test func callsDuringALargeBatchAreQueuedWithoutWakingTheOwnerAndConfirmed() async throws {
        let exchange = "deferred-wakeup-\(UUID().uuidString.prefix(8))"
        let probe = try await QueueProbe(exchange: exchange)
        defer { Task { await probe.stop() } }
        let batch = (0..<5_000).map { message(exchange: exchange, key: "BATCH", body: "b-\($0)") }
        let singles = 50
        // A window of 16: the owner writes the batch 16 at a time and waits for their confirms in
        // between (with the default of 1024 a fast broker may keep it writing until the end).
        let configuration = AMQPPublisherConfiguration(
            connection: node.connection, exchanges: [.init(name: exchange, mode: .declareIfMissing)], maxUnconfirmed: 16)
        try await withPublisher(configuration) { publisher in
            try await waitUntil("publisher connected") { publisher.state == .connected }
            try await withThrowingTaskGroup(of: Void.self) { group in
                group.addTask { try await publisher.publish(batch) }
                // Once the owner has waited with the batch's confirms outstanding, a call leaves it asleep.
                try await waitUntil("a call queued without a wake-up") {
                    try await publisher.publish([message(exchange: exchange, key: "PROBE", body: "probe")])
                    return publisher.deferredWakeupCount > 0
                }
                for index in 0..<singles {
                    group.addTask { try await publisher.publish([message(exchange: exchange, key: "ONE", body: "one-\(index)")]) }
                }
                try await group.waitForAll()
            }
            // Then, the owner asleep with nothing left to confirm, calls too large for their
            // callers to write (see PublisherCallerWriteTests): each must wake it.
            let deferredBefore = publisher.deferredWakeupCount
            for index in 0..<5 {
                try await waitUntil("owner waiting idle") { publisher.ownerWaitsIdle }
                let call = (0...AMQPPublisher.callerWriteMessages).map { message(exchange: exchange, key: "AFTER", body: "after-\(index)-\($0)") }
                try await publisher.publish(call)
            }
            #expect(publisher.deferredWakeupCount == deferredBefore, "a call left an owner with nothing to confirm asleep")
        }
        // Every call was confirmed and every message arrived.
        let received = try await probe.waitForMessages(count: batch.count + singles + 5 * (AMQPPublisher.callerWriteMessages + 1), timeout: .seconds(60))
        #expect(received.filter { $0.routingKey == "BATCH" }.count == batch.count)
        #expect(Set(received.filter { $0.routingKey == "ONE" }.map { String(decoding: $0.body, as: UTF8.self) }).count == singles)
    }
}
