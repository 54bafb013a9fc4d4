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
}
