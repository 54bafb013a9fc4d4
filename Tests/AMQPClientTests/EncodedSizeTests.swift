import CRabbitMQ
import Testing

@testable import AMQPClient

/// The bytes a message takes on the wire, which the publisher checks a caller's own write against
/// (see `AMQPPublisher.publish`): method frame, content header frame, one frame per frame of body.
@Suite struct EncodedSizeTests {
    func message(body: Int) -> AMQPOutboundMessage {
        AMQPOutboundMessage(
            exchange: "ex", routingKey: "KEY", properties: AMQPProperties(contentType: "application/json", headers: [("h", .int(1))]),
            body: Array(repeating: 0x61, count: body))
    }

    // Method frame: 8 + class and method 4 + reserved 2 + exchange (1 + 2) + routing key (1 + 3) + flags 1.
    let method = 22
    // Header frame: 8 + 14 + content type (1 + 16) + delivery mode 1 + table (4 + 1 + 1 + 1 + 8).
    let header = 55

    @Test func methodAndHeaderFramesThenOneFrameHeaderPerFrameOfBody() {
        #expect(message(body: 0).encodedSize(frameSize: 4096) == method + header)
        #expect(message(body: 4088).encodedSize(frameSize: 4096) == method + header + 4088 + 8)
        #expect(message(body: 4089).encodedSize(frameSize: 4096) == method + header + 4089 + 16)
        #expect(message(body: 4089).encodedSize(frameSize: 131_072) == method + header + 4089 + 8)
    }

    @Test func theHeaderFrameIsWhatTheFrameSizeCheckMeasures() {
        // Without its table the header frame is 40 bytes; a table of one string header of n bytes
        // is 4 + (1 + 1) + 1 + (4 + n).
        let fits = 4096 - 40 - 11
        var big = message(body: 0)
        big.properties.headers = [("h", .string(String(repeating: "v", count: fits)))]
        #expect(big.contentHeaderFrameSize == 4096)
        #expect(big.encodingProblem() == nil)
        big.properties.headers = [("h", .string(String(repeating: "v", count: fits + 1)))]
        #expect(big.encodingProblem()?.contains("frame size is 4096") == true)
    }

    /// rabbitmq-c's own encoders (the method's arguments, the properties) plus the framing it adds
    /// (frame header and end, method id; class, weight and body size; one frame per frame of body).
    @Test(arguments: [0, 1, 4088, 4089, 40_000])
    func agreesWithRabbitMQCsEncoders(bodyBytes: Int) throws {
        var full = AMQPOutboundMessage(
            exchange: "tutorcruncher", routingKey: "CHANGED_CONTRACTOR_STATUS",
            properties: AMQPProperties(
                contentType: "application/json", messageID: "abc-0", type: "CHANGED_CONTRACTOR_STATUS", timestamp: 1_700_000_000,
                appID: "tc-bridge", headers: [("tc-subject-model", .string("Contractor")), ("tc-subject-id", .int(59)), ("flag", .bool(true))]),
            body: Array(repeating: 0x61, count: bodyBytes))
        full.properties.expiration = "60000"
        let bare = AMQPOutboundMessage(exchange: "", routingKey: "q", properties: AMQPProperties(), body: Array(repeating: 0x61, count: bodyBytes))
        for message in [full, bare] {
            for frameSize in [4096, 131_072] {
                var buffer = [UInt8](repeating: 0, count: 1 << 16)
                let method = withBytes(message.exchange) { exchange in
                    withBytes(message.routingKey) { routingKey in
                        var publish = amqp_basic_publish_t(
                            ticket: 0, exchange: exchange, routing_key: routingKey, mandatory: message.mandatory ? 1 : 0, immediate: 0)
                        return buffer.withUnsafeMutableBytes { raw in
                            amqp_encode_method(0x003C_0028, &publish, amqp_bytes_t(len: raw.count, bytes: raw.baseAddress))  // basic.publish
                        }
                    }
                }
                let properties = withProperties(message.properties) { properties in
                    var properties = properties
                    return buffer.withUnsafeMutableBytes { raw in
                        amqp_encode_properties(0x003C, &properties, amqp_bytes_t(len: raw.count, bytes: raw.baseAddress))  // basic
                    }
                }
                try #require(method > 0 && properties > 0)
                let bodyFrames = (message.body.count + frameSize - 9) / (frameSize - 8)
                let expected = (8 + 4 + Int(method)) + (8 + 12 + Int(properties)) + message.body.count + 8 * bodyFrames
                #expect(message.encodedSize(frameSize: frameSize) == expected, "frame size \(frameSize), exchange \(message.exchange)")
            }
        }
    }
}
