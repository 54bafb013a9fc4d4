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
        try await admin.declare(queues: [
            AMQPQueueDeclaration(name: deadLetters, durable: false),
            AMQPQueueDeclaration(
                name: queue, durable: false,
                arguments: ["x-dead-letter-exchange": .string(""), "x-dead-letter-routing-key": .string(deadLetters)]),
        ])
        try await admin.publishConfirmed([Self.fillingTheFrame(routingKey: queue)])

        // Rejected, it is dead-lettered with an `x-death` header: now past the frame size.
        let connection = node.connection
        try await onOwnThread { () throws -> Void in
            let reader = try AMQPConnection(configuration: connection)
            let got = try #require(try reader.get(queue: queue))
            try reader.nack(got.deliveryTag, requeue: false)
            reader.close()
        }
        try await waitUntil("the message dead-lettered") { try await admin.messageCount(queue: deadLetters) == 1 }

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
        #expect(readError?.message.contains("larger than the frame size of 131072 bytes") == true, "\(String(describing: readError))")
        #expect(laterError?.message.contains("connection unusable after a failed read") == true, "\(String(describing: laterError))")
        #expect(!closed, "close() must not wait for a close-ok on a connection it cannot read")

        // The admin tool (`tc-consume dead-letters`) and a consumer say so and carry on.
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

    /// A message on the default exchange whose content header frame is one byte short of the default frame size.
    static func fillingTheFrame(routingKey: String) -> AMQPOutboundMessage {
        let frameSize = 131_072
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
