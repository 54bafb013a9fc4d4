import FuzzChecks
import TestSupport
import Testing
import TutorCruncher

/// `WebhookPayload.scan` (the bridge's request path: no tree) against `WebhookPayload.parse` (the
/// tree): the same classification, reasons, JSON errors and envelope bytes for every input.
@Suite struct WebhookScanTests {
    static let fixtures = ["changed-contractor-status.2021.json", "changed-contractor-status.2023.json", "created-a-contractor.2025.json"]

    static func disagreements(_ body: [UInt8], maximumDepth: Int = 256) -> [String] {
        let parser = JSONParser(maximumDepth: maximumDepth)
        return FuzzChecks.scanDisagreements(body, parsed: WebhookPayload.parse(body, parser: parser), parser: parser)
    }

    @Test(arguments: fixtures)
    func realBodiesGiveTheSameEnvelopes(name: String) throws {
        let body = try Fixture.bytes(name)
        guard case .events(let summaries) = WebhookPayload.scan(body) else {
            Issue.record("not read as events")
            return
        }
        #expect(!summaries.events.isEmpty)
        #expect(Self.disagreements(body) == [])
    }

    @Test func theValuesAMessageNeedsAreRead() throws {
        let body = try Fixture.bytes("changed-contractor-status.2021.json")
        guard case .events(let summaries) = WebhookPayload.scan(body), let event = summaries.events.first else {
            Issue.record("not read as events")
            return
        }
        guard case .events(let batch) = WebhookPayload.parse(body), let parsed = batch.events.first else {
            Issue.record("not parsed as events")
            return
        }
        #expect(event.action == parsed["action"]?.stringValue)
        #expect(event.subjectModel == parsed["subject"]?["model"]?.stringValue)
        #expect(event.subjectID == parsed["subject"]?["id"])
        #expect(event.branch == parsed["branch"]?.int64Value)
        #expect(summaries.requestTime == batch.requestTime)
    }

    /// Every prefix of a real body: each is an error somewhere (or, cut at the end, the whole body),
    /// and the scan must report the very error the parser reports, at the same offset.
    @Test(arguments: fixtures)
    func everyTruncationGivesTheSameAnswer(name: String) async throws {
        let body = try Fixture.bytes(name)
        let failures = try await runCPUHeavy {
            var failures: [String] = []
            for length in 0...body.count {
                let found = Self.disagreements(Array(body.prefix(length)))
                if !found.isEmpty { failures.append("prefix \(length): \(found)") }
            }
            return failures
        }
        #expect(Array(failures.prefix(5)) == [], "\(failures.count) disagreed")
    }

    /// Deterministic mutations of real bodies (byte changes, deletions, insertions of JSON's
    /// structural characters, escapes and invalid UTF-8).
    @Test(arguments: fixtures)
    func mutatedBodiesGiveTheSameAnswer(name: String) async throws {
        let body = try Fixture.bytes(name)
        let alphabet = Array(#"{}[]:,"\/u0aeE-+.tfn "#.utf8) + [0x00, 0x1F, 0x80, 0xC3, 0xED, 0xF4, 0xFF]
        let failures = try await runCPUHeavy {
            var random = SplitMix64(seed: 0x7CB)
            var failures: [String] = []
            for round in 0..<3000 {
                var mutated = body
                for _ in 0..<(1 + Int(random.next() % 3)) {
                    let position = Int(random.next() % UInt64(mutated.count))
                    let byte = alphabet[Int(random.next() % UInt64(alphabet.count))]
                    switch random.next() % 3 {
                    case 0: mutated[position] = byte
                    case 1: mutated.remove(at: position)
                    default: mutated.insert(byte, at: position)
                    }
                }
                let found = Self.disagreements(mutated)
                if !found.isEmpty { failures.append("round \(round): \(found)") }
            }
            return failures
        }
        #expect(Array(failures.prefix(5)) == [], "\(failures.count) disagreed")
    }

    @Test(arguments: [
        // Duplicates: the last wins everywhere, as JSONObject's subscript has it.
        #"{"events":[{"action":"a"}],"events":[{"action":"b","action":"c"}]}"#,
        #"{"events":[{"action":"a"}],"events":{}}"#,
        #"{"events":[{"action":""}],"events":[{"action":"x"}]}"#,
        #"{"events":[{"action":"a","action":""}]}"#,
        #"{"events":[{"action":"a","action":1}]}"#,
        #"{"events":[{"action":"a","subject":{"model":"Tutor","id":1,"model":"Client","id":"x"}}]}"#,
        #"{"events":[{"action":"a","subject":{"model":"Tutor","id":1},"subject":null}]}"#,
        #"{"events":[{"action":"a","subject":{"id":[1],"model":2}}]}"#,
        #"{"events":[{"action":"a","branch":1,"branch":"2"}]}"#,
        #"{"events":[{"action":"a","branch":99999999999999999999}]}"#,
        #"{"events":[{"action":"a","branch":1.0}]}"#,
        #"{"_request_time":1,"request_time":null,"events":[{"action":"a"}]}"#,
        #"{"request_time":1,"_request_time":2,"events":[{"action":"a"}]}"#,
        #"{"_request_time":{"nested":[1,2]},"events":[{"action":"a"}]}"#,
        // Escaped names still count; escapes and surrogates in skipped values are validated.
        #"{"ev\u0065nts":[{"\u0061ction":"a","subject":{"m\u006fdel":"T\u00fctor"}}]}"#,
        #"{"events":[{"action":"a","note":"\ud800 lone","x":"\ud83d\ude00","y":"\q"}]}"#,
        #"{"events":[{"action":"a","note":"\u12"}]}"#,
        // Not events.
        #"[]"#, #""events""#, #"{}"#, #"{"events":null}"#, #"{"events":[1,{"action":"a"}]}"#,
        #"{"events":[{"action":"a"},[]]}"#, #"{"events":[{"no":"action"},5]}"#,
        // Not JSON.
        #"{"events":[{"action":"a"}]} x"#, #"{"events":[{"action":"a",}]}"#, #"{"events":[{"action":"a"},]}"#,
        #"{"events":[{"action":"a","n":01}]}"#, #"{"events":[{"action":"a","n":-}]}"#, #"{"events":[{"action":"a","t":tru}]}"#,
        "{\"events\":[{\"action\":\"a\",\"s\":\"tab\u{09}in\"}]}", #"{"events" [{}]}"#, #"{"events":[{"action" "a"}]}"#, "",
        " ", #"{"events":[{"action":"a","k":{"a":1 "b":2}}]}"#, #"{"events":[{"action":"a","k":[1 2]}]}"#,
    ])
    func edgeCasesGiveTheSameAnswer(text: String) {
        #expect(Self.disagreements(Array(text.utf8)) == [])
    }

    @Test func invalidUTF8InASkippedStringIsTheSameError() {
        var body = Array(#"{"events":[{"action":"a","note":"x"#.utf8)
        body += [0xC3, 0x28]
        body += Array(#""}]}"#.utf8)
        #expect(Self.disagreements(body) == [])
        guard case .unrecognised(let reason) = WebhookPayload.scan(body) else {
            Issue.record("invalid UTF-8 accepted")
            return
        }
        #expect(reason.hasPrefix("not JSON: invalid UTF-8 in string"))
    }

    /// Nesting limits count the same: at, and one over, every depth the scan treats specially (the
    /// root, `events`, an event, `subject`, a skipped value).
    @Test(arguments: 0...7)
    func depthLimitsGiveTheSameAnswer(maximumDepth: Int) {
        let body = Array(#"{"events":[{"action":"a","subject":{"model":"T","deep":[[{"x":[1]}]]},"other":[{"y":{}}]}],"request_time":[[1]]}"#.utf8)
        #expect(Self.disagreements(body, maximumDepth: maximumDepth) == [])
    }

    @Test func deepNestingIsRefusedNotOverflowed() {
        let body = Array(#"{"events":[{"action":"a","x":"#.utf8) + Array(repeating: UInt8(ascii: "["), count: 100_000)
        #expect(Self.disagreements(body) == [])
    }
}
