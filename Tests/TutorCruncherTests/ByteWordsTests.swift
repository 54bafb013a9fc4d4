import Testing

@testable import TutorCruncher

/// The word-at-a-time skips against byte-by-byte definitions of what they may pass over.
@Suite struct ByteWordsTests {
    /// What a string's byte loop passes over without a change: plain ASCII other than `"` and `\`.
    static func isPlain(_ byte: UInt8) -> Bool { byte >= 0x20 && byte < 0x80 && byte != 0x22 && byte != 0x5C }

    /// The definition: the start of the first whole word (from `start`) with a byte that is not plain.
    static func referencePlainASCIIEnd(_ bytes: [UInt8], from start: Int) -> Int {
        var offset = start
        while bytes.count - offset >= 8, bytes[offset..<offset + 8].allSatisfy(isPlain) { offset += 8 }
        return offset
    }

    static func referenceSpacesEnd(_ bytes: [UInt8], from start: Int) -> Int {
        var offset = start
        while bytes.count - offset >= 8, bytes[offset..<offset + 8].allSatisfy({ $0 == 0x20 }) { offset += 8 }
        return offset
    }

    @Test func everyByteValueAtEveryPositionOfAWord() {
        var mismatches: [String] = []
        for position in 0..<8 {
            for value in UInt8.min...UInt8.max {
                for filler: UInt8 in [UInt8(ascii: "a"), 0x20, 0x7F] {
                    var word = [UInt8](repeating: filler, count: 8)
                    word[position] = value
                    // A word and the rest of a string after it: the skip stops at the word or passes it.
                    let bytes = word + Array("tail\"".utf8)
                    if ByteWords.plainASCIIEnd(in: bytes, from: 0) != Self.referencePlainASCIIEnd(bytes, from: 0) {
                        mismatches.append("plain: byte \(value) at \(position) in \(filler)s")
                    }
                    if ByteWords.spacesEnd(in: bytes, from: 0) != Self.referenceSpacesEnd(bytes, from: 0) {
                        mismatches.append("spaces: byte \(value) at \(position) in \(filler)s")
                    }
                }
            }
        }
        #expect(mismatches.isEmpty, "\(mismatches.prefix(10))")
    }

    @Test func randomRunsFromEveryStartAgreeWithTheDefinition() {
        var generator = SplitMix64(seed: 0x5EED)
        let alphabet: [UInt8] = [0x20, 0x20, 0x20, UInt8(ascii: "a"), UInt8(ascii: "\""), UInt8(ascii: "\\"), 0x0A, 0x1F, 0x7F, 0x80, 0xC3, 0xFF]
        var mismatches: [String] = []
        for _ in 0..<2_000 {
            let count = Int(generator.next() % 40)
            // Mostly plain or mostly spaces, so the runs are long enough to be skipped.
            let base: UInt8 = generator.next() % 2 == 0 ? UInt8(ascii: "x") : 0x20
            let bytes = (0..<count).map { _ in generator.next() % 6 == 0 ? alphabet[Int(generator.next() % UInt64(alphabet.count))] : base }
            for start in 0...count {
                if ByteWords.plainASCIIEnd(in: bytes, from: start) != Self.referencePlainASCIIEnd(bytes, from: start) {
                    mismatches.append("plain \(bytes) from \(start)")
                }
                if ByteWords.spacesEnd(in: bytes, from: start) != Self.referenceSpacesEnd(bytes, from: start) {
                    mismatches.append("spaces \(bytes) from \(start)")
                }
            }
        }
        #expect(mismatches.isEmpty, "\(mismatches.prefix(5))")
    }

    @Test func stringsAndIndentationReadTheSameAcrossWordBoundaries() throws {
        // Each length puts the closing quote, an escape, a control character or a multi-byte
        // character at another place in a word.
        for length in 0..<24 {
            let plain = String(repeating: "k", count: length)
            #expect(try JSONParser().parse(Array("\"\(plain)\"".utf8)) == .string(plain))
            #expect(try JSONParser().parse(Array("\"\(plain)\\n\"".utf8)) == .string(plain + "\n"))
            #expect(try JSONParser().parse(Array("\"\(plain)é\"".utf8)) == .string(plain + "é"))
            #expect(throws: JSONParseError(reason: "unescaped control character in string", offset: 1 + length)) {
                try JSONParser().parse(Array("\"\(plain)\u{1}\"".utf8))
            }
            #expect(throws: JSONParseError(reason: "unterminated string", offset: 1 + length)) {
                try JSONParser().parse(Array("\"\(plain)".utf8))
            }
            let indented = "{\n" + String(repeating: " ", count: length) + "\"k\": [\n" + String(repeating: " ", count: length) + "1]}"
            #expect(try JSONParser().parse(Array(indented.utf8)) == .object(JSONObject(["k": .array([.number("1")])])))
            #expect(throws: JSONParseError(reason: "expected a member name", offset: 2 + length)) {
                try JSONParser().parse(Array(("{\n" + String(repeating: " ", count: length) + "x}").utf8))
            }
        }
    }

    /// The webhook scan skips strings it does not decode (`skipString`): the same answers as the
    /// tree parser, the same errors at the same offsets, wherever a word boundary falls.
    @Test func theScanSkipsStringsAsTheParserReadsThem() {
        for length in 0..<24 {
            let plain = String(repeating: "v", count: length)
            for value in ["\"\(plain)\"", "\"\(plain)\\t\"", "\"\(plain)ü\"", "\"\(plain)\u{1}\"", "\"\(plain)"] {
                let body = Array("{\"events\": [{\"action\": \"A\", \"verb\": \(value)}]}".utf8)
                let tree = WebhookPayload.parse(body)
                switch WebhookPayload.scan(body) {
                case .events(let scanned):
                    guard case .events(let parsed) = tree else {
                        Issue.record("scan accepted what the parser refused: \(value)")
                        continue
                    }
                    #expect(scanned.events.map(\.action) == parsed.events.map { $0["action"]?.stringValue ?? "" })
                case .unrecognised(let reason):
                    #expect(tree == .unrecognised(reason: reason), "\(value)")
                }
            }
            // Invalid UTF-8 after a plain run is reported where the string's bytes begin.
            let invalid = Array("{\"events\": [{\"action\": \"A\", \"verb\": \"\(plain)".utf8) + [0xC3, 0x28] + Array("\"}]}".utf8)
            #expect(WebhookPayload.scan(invalid) == .unrecognised(reason: "not JSON: invalid UTF-8 in string at byte 37"))
        }
    }
}

/// A small deterministic generator, so a failure replays.
private struct SplitMix64 {
    var state: UInt64
    init(seed: UInt64) { state = seed }
    mutating func next() -> UInt64 {
        state &+= 0x9E37_79B9_7F4A_7C15
        var z = state
        z = (z ^ (z >> 30)) &* 0xBF58_476D_1CE4_E5B9
        z = (z ^ (z >> 27)) &* 0x94D0_49BB_1331_11EB
        return z ^ (z >> 31)
    }
}
