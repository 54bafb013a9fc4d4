import Testing
import TutorCruncher

@Suite struct JSONParserTests {
    let parser = JSONParser()

    func parse(_ text: String) throws -> JSONValue { try parser.parse(Array(text.utf8)) }

    @Test func numbersKeepTheirLiteralText() throws {
        let value = try parse(#"{"a": 55.90000, "b": 97.5, "c": 1854.9, "d": -0.2082010000000000, "e": 1e3, "f": 12345678901234567890}"#)
        #expect(JSONWriter.string(value) == #"{"a":55.90000,"b":97.5,"c":1854.9,"d":-0.2082010000000000,"e":1e3,"f":12345678901234567890}"#)
    }

    @Test func memberOrderIsKept() throws {
        let value = try parse(#"{"z": 1, "a": 2, "m": 3}"#)
        #expect(value.objectValue?.keys == ["z", "a", "m"])
    }

    @Test func escapesAndNonASCIIRoundTrip() throws {
        let value = try parse(#"{"name": "last_nam\u00e9_6", "emoji": "\ud83d\ude00", "quote": "a\"b\\c\n\t/", "raw": "é"}"#)
        #expect(value["name"] == .string("last_namé_6"))
        #expect(value["emoji"] == .string("😀"))
        #expect(value["quote"] == .string("a\"b\\c\n\t/"))
        let reparsed = try parser.parse(JSONWriter.bytes(value))
        #expect(reparsed == value)
    }

    @Test func controlCharactersAreEscapedOnOutput() throws {
        let value = JSONValue.string("a\u{01}b")
        #expect(JSONWriter.string(value) == #""a\u0001b""#)
    }

    @Test(arguments: [
        #"{"a": 1,}"#, #"[1, 2,]"#, #"{"a": 01}"#, #"{"a": .5}"#, #"{"a": 1.}"#, #"{'a': 1}"#, #"{"a": tru}"#,
        #"{"a": "\x"}"#, "{\"a\": \"line\nbreak\"}", #"{"a": 1} x"#,
        #"{"a" 1}"#, #"{"a": [1 2]}"#, "", "   ", #"{"a": "unterminated}"#, #"// comment"#, "NaN", #"{"a": -}"#,
    ])
    func invalidJSONIsRejected(text: String) {
        #expect(throws: JSONParseError.self) { try parse(text) }
    }

    @Test func loneSurrogateEscapesAreReadAsReplacementCharacters() throws {
        #expect(try parse(#"{"a": "\ud800"}"#)["a"] == .string("\u{FFFD}"))
        #expect(try parse(#"{"a": "\udc00x"}"#)["a"] == .string("\u{FFFD}x"))
        #expect(try parse(#"{"a": "\ud800\u0041"}"#)["a"] == .string("\u{FFFD}A"))
        #expect(try parse(#"{"a": "\ud83d\ude00"}"#)["a"] == .string("😀"))
    }

    @Test func invalidUTF8IsRejected() {
        #expect(throws: JSONParseError.self) { try parser.parse([0x22, 0xC3, 0x28, 0x22]) }
    }

    @Test func deepNestingIsAnErrorNotACrash() {
        let deep = String(repeating: "[", count: 100_000) + String(repeating: "]", count: 100_000)
        #expect(throws: JSONParseError.self) { try parse(deep) }
        let nested = String(repeating: "[", count: 200) + String(repeating: "]", count: 200)
        #expect(throws: Never.self) { try parse(nested) }
    }

    @Test func duplicateKeysReadTheLastValueButAreKept() throws {
        let value = try parse(#"{"a": 1, "a": 2}"#)
        #expect(value["a"] == .number("2"))
        #expect(JSONWriter.string(value) == #"{"a":1,"a":2}"#)
    }

    @Test func scalarsAtTheRoot() throws {
        #expect(try parse(" true ") == .bool(true))
        #expect(try parse("null") == .null)
        #expect(try parse("-0") == .number("-0"))
        #expect(try parse(#""x""#) == .string("x"))
    }
}
