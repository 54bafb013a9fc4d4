import Foundation
import Logging
import Testing

@testable import TCBridge

@Suite struct BridgeLogHandlerTests {
    let time = "2026-11-30T12:00:00.000Z"

    @Test func textLinesCarrySortedMetadataSourceAndMessage() {
        let handler = BridgeLogHandler(label: "tc-bridge", format: .text, output: LogOutput.capture())
        let line = handler.render(level: .warning, message: "broker down", metadata: ["b": "2", "a": "1"], source: "AMQPClient", time: time)
        #expect(line == "2026-11-30T12:00:00.000Z warning tc-bridge: a=1 b=2 [AMQPClient] broker down\n")
    }

    @Test func jsonLinesAreOneValidObjectEachWithEscapes() throws {
        let handler = BridgeLogHandler(label: "tc-bridge", format: .json, output: LogOutput.capture())
        let line = handler.render(
            level: .info, message: "quote \" backslash \\ newline \n bell \u{7}",
            metadata: ["request_id": "r-1", "nested": ["k": ["x", "y"]], "message": "ignored: reserved"],
            source: "TCBridge", time: time)
        #expect(line.hasSuffix("}\n"))
        #expect(line.filter { $0 == "\n" }.count == 1, "one line per entry")
        let object = try #require(try JSONSerialization.jsonObject(with: Data(line.utf8)) as? [String: Any])
        #expect(object["message"] as? String == "quote \" backslash \\ newline \n bell \u{7}")
        #expect(object["level"] as? String == "info")
        #expect(object["request_id"] as? String == "r-1")
        #expect((object["nested"] as? [String: [String]])?["k"] == ["x", "y"])
    }

    @Test func metadataSetOnTheLoggerAndPassedWithTheLineAreMerged() throws {
        let output = LogOutput.capture()
        var logger = Logger(label: "test") { label in BridgeLogHandler(label: label, format: .json, output: output) }
        logger[metadataKey: "request_id"] = "r-7"
        logger.info("published", metadata: ["messages": "3"])
        logger.debug("not written at info")
        let lines = output.captured
        #expect(lines.count == 1)
        let object = try #require(try JSONSerialization.jsonObject(with: Data(lines[0].utf8)) as? [String: Any])
        #expect(object["request_id"] as? String == "r-7")
        #expect(object["messages"] as? String == "3")
    }

    @Test func anErrorPassedWithTheLineIsRenderedUnlessTheLineNamesOne() throws {
        struct Refused: Error, CustomStringConvertible { var description: String { "spool full" } }
        let output = LogOutput.capture()
        let logger = Logger(label: "test") { label in BridgeLogHandler(label: label, format: .json, output: output) }
        logger.error("spool refused", error: Refused())
        logger.error("spool refused", error: Refused(), metadata: ["error": "named by the line"])
        let objects = try output.captured.map { try #require(try JSONSerialization.jsonObject(with: Data($0.utf8)) as? [String: Any]) }
        #expect(objects.map { $0["error"] as? String } == ["spool full", "named by the line"])
    }

    @Test func textLinesEscapeLineBreaksSoAValueCannotForgeALine() {
        let handler = BridgeLogHandler(label: "tc-bridge", format: .text, output: LogOutput.capture())
        let line = handler.render(
            level: .info, message: "webhook\n2026-11-30T00:00:00.000Z critical forged", metadata: ["action": "A\r\nB\u{1b}"],
            source: "TCBridge", time: time)
        #expect(line.filter { $0 == "\n" || $0 == "\r\n" }.count == 1, "\(line)")
        #expect(line.contains(#"action=A\r\nB\u{1b}"#))
        #expect(line.hasSuffix(#"webhook\n2026-11-30T00:00:00.000Z critical forged"# + "\n"))
    }

    @Test func timestampsAreUTCWithMilliseconds() {
        let stamp = BridgeLogHandler.timestamp()
        #expect(stamp.range(of: #"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}\.\d{3}Z$"#, options: .regularExpression) != nil, "\(stamp)")
    }
}
