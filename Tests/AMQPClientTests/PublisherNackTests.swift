import AMQPClient
import Foundation
import Logging
import Testing
import TestSupport

/// A broker that nacks everything on a channel: every call is answered, and after three nacks in
/// a row the publisher replaces the connection (a fresh channel), then carries on.
@Suite struct PublisherNackTests {
    let node = RabbitMQNode.shared

    @Test func aChannelTheBrokerKeepsRefusingIsReplacedAndEveryCallIsAnswered() async throws {
        let exchange = "nack-ex-\(UUID().uuidString.prefix(8))"
        let log = CapturedLog()
        let publisher = AMQPPublisher(
            configuration: .init(
                connection: node.connection,
                exchanges: [.init(name: exchange, mode: .declareIfMissing)],
                queues: [
                    // Full from the start, and refusing: every message routed to it is nacked.
                    AMQPQueueDeclaration(
                        name: "nack-full-\(UUID().uuidString.prefix(8))", durable: false,
                        arguments: ["x-max-length": .int(0), "x-overflow": .string("reject-publish"), "x-expires": .int(60_000)],
                        bindings: [.init(exchange: exchange, routingKey: "full")])
                ]),
            logger: log.logger(label: "nack-test", level: .trace))
        let runner = Task { try await publisher.run() }
        defer {
            publisher.requestStop()
            runner.cancel()
        }
        try await waitUntil("publisher connected") { publisher.state == .connected }
        var kinds: [AMQPError.Kind] = []
        for index in 0..<3 {
            do {
                try await publisher.publish([message(exchange: exchange, key: "full", body: "{\"n\":\(index)}")])
                Issue.record("a full reject-publish queue accepted a message")
            } catch {
                kinds.append(error.kind)
            }
        }
        #expect(kinds == [.nacked, .nacked, .nacked])
        try await waitUntil("reconnected for a fresh channel") { log.all.contains { $0.contains("3 messages in a row; reconnecting") } }
        try await waitUntil("connected again") { publisher.state == .connected }
        // What the broker accepts still goes through, on the new connection.
        try await publisher.publish([message(exchange: exchange, key: "elsewhere", body: "{}")])
    }
}

