@testable import AMQPClient
import Foundation
import Testing
import TestSupport

/// RabbitMQ sends a message whose properties outgrew the frame size in one frame anyway (here:
/// dead-lettering added `x-death` to one that just fitted). rabbitmq-c refuses that frame, and its
/// input state is then inconsistent: the next read wrote past a 7-byte buffer and crashed the
/// process (seen as a SIGSEGV in `amqp_handle_input` when `close()` waited for its `close-ok`).
/// Reading such a message must fail the call, leave the process running and the message where it is.
@Suite struct OversizeFrameTests {
    @Test func aMessageLargerThanTheFrameFailsItsReadersWithoutCrashingThemAndStaysInItsQueue() async throws {
        let queue = "oversize-\(UUID().uuidString.prefix(8))"
        let deadLetters = queue + ".dead"
        let node = RabbitMQNode.shared
        let admin = AMQPAdmin(connection: node.connection)
        let connection = node.connection
        let frameSize = try await Self.oversizeMessage(in: deadLetters, via: queue)

        // One connection: the read fails with what happened; everything after it fails without reading.
        let (readError, laterError, closed) = try await onOwnThread { () throws -> (AMQPError?, AMQPError?, Bool) in
            let reader = try AMQPConnection(configuration: connection)
            var readError: AMQPError?
            do throws(AMQPError) { _ = try reader.get(queue: deadLetters) } catch { readError = error }
            var laterError: AMQPError?
            do throws(AMQPError) { _ = try reader.declarePassive(queue: deadLetters) } catch { laterError = error }
            return (readError, laterError, reader.close())
        }
        #expect(readError?.kind == .connectionLost)
        #expect(readError?.message.contains("larger than the frame size of \(frameSize) bytes") == true, "\(String(describing: readError))")
        #expect(laterError?.message.contains("connection unusable after a failed read") == true, "\(String(describing: laterError))")
        #expect(!closed, "close() must not wait for a close-ok on a connection it cannot read")

        // The admin tool (`tc-consume dead-letters`) and a consumer say so and carry on. (First the
        // broker takes the message back from the connection that could not read it.)
        try await waitUntil("the message back in the dead-letter queue") { try await admin.messageCount(queue: deadLetters) == 1 }
        await #expect(throws: AMQPError.self) { _ = try await admin.peek(queue: deadLetters, limit: 10) }
        let consumer = AMQPConsumer(
            configuration: AMQPConsumerConfiguration(
                connection: node.connection, queue: deadLetters,
                reconnectBackoff: AMQPBackoff(initial: .seconds(1), maximum: .seconds(2)), shutdownTimeout: .seconds(3)),
            logger: quietConsumerLogger)
        let runner = Task { try await consumer.run() }
        try await waitUntil("the consumer reports the oversize frame") {
            if case .disconnected(let reason) = consumer.state { return reason.contains("larger than the frame size") }
            return false
        }
        consumer.requestStop()
        try await runner.value

        // Nothing was lost on the way.
        try await waitUntil("the message back in the dead-letter queue") { try await admin.messageCount(queue: deadLetters) == 1 }
        #expect(try await admin.deleteQueue(queue) == 0)
        _ = try await admin.deleteQueue(deadLetters)
    }

    /// `tc-consume dead-letters --requeue` stops at such a message and says how many it moved before.
    @Test func aMoveStoppedByAMessageLargerThanTheFrameSaysHowManyItMoved() async throws {
        let queue = "oversize-move-\(UUID().uuidString.prefix(8))"
        let (source, destination) = (queue + ".dead", queue + ".back")
        let admin = AMQPAdmin(connection: RabbitMQNode.shared.connection)
        try await admin.declare(queues: [AMQPQueueDeclaration(name: destination, durable: false), AMQPQueueDeclaration(name: source, durable: false)])
        // An ordinary message first, then one past the frame size.
        try await admin.publishConfirmed([AMQPOutboundMessage(exchange: "", routingKey: source, properties: AMQPProperties(), body: [1])])
        _ = try await Self.oversizeMessage(in: source, via: queue)

        var failure: AMQPError?
        do throws(AMQPError) {
            _ = try await admin.move(queue: source, limit: 10) {
                AMQPOutboundMessage(exchange: "", routingKey: destination, properties: $0.properties, body: $0.body)
            }
        } catch {
            failure = error
        }
        #expect(failure?.message.hasPrefix("1 messages were published again before this failed: ") == true, "\(String(describing: failure))")
        #expect(failure?.message.contains("larger than the frame size") == true)
        try await waitUntil("the oversize message back in its queue") { try await admin.messageCount(queue: source) == 1 }
        #expect(try await admin.messageCount(queue: destination) == 1)
        for name in [queue, source, destination] { _ = try await admin.deleteQueue(name) }
    }

    /// Puts a message past the frame size at the end of `queue`: published to `via` (declared here,
    /// dead-lettering into `queue`) one byte short of it, then rejected, so the broker adds `x-death`.
    /// Returns the frame size.
    static func oversizeMessage(in queue: String, via origin: String) async throws -> Int {
        let connection = RabbitMQNode.shared.connection
        let admin = AMQPAdmin(connection: connection)
        try await admin.declare(queues: [
            AMQPQueueDeclaration(name: queue, durable: false),
            AMQPQueueDeclaration(
                name: origin, durable: false, arguments: ["x-dead-letter-exchange": .string(""), "x-dead-letter-routing-key": .string(queue)]),
        ])
        let before = try await admin.messageCount(queue: queue)
        let frameSize = try await onOwnThread { () throws -> Int in
            let probe = try AMQPConnection(configuration: connection)
            defer { probe.close() }
            return probe.frameSize
        }
        try await admin.publishConfirmed([fillingTheFrame(frameSize, routingKey: origin)])
        try await onOwnThread { () throws -> Void in
            let reader = try AMQPConnection(configuration: connection)
            let got = try #require(try reader.get(queue: origin))
            try reader.nack(got.deliveryTag, requeue: false)
            reader.close()
        }
        try await waitUntil("the message dead-lettered") { try await admin.messageCount(queue: queue) == before + 1 }
        return frameSize
    }

    /// A message on the default exchange whose content header frame is at most one byte short of `frameSize`.
    static func fillingTheFrame(_ frameSize: Int, routingKey: String) -> AMQPOutboundMessage {
        func padded(_ length: Int) -> AMQPOutboundMessage {
            AMQPOutboundMessage(
                exchange: "", routingKey: routingKey,
                properties: AMQPProperties(messageID: "big", headers: [("x-padding", .string(String(repeating: "p", count: length)))]),
                body: Array("body".utf8))
        }
        var (fits, tooLong) = (0, frameSize)
        while tooLong - fits > 1 {
            let middle = (fits + tooLong) / 2
            if padded(middle).encodingProblem(frameSize: frameSize) == nil { fits = middle } else { tooLong = middle }
        }
        return padded(fits)
    }
}
