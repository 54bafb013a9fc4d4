import HexCoding
import Testing

@Suite struct HexTests {
    /// Two digits per byte, spelled independently of the encoder.
    static func reference(_ bytes: [UInt8]) -> String {
        let digits = Array("0123456789abcdef")
        return String(bytes.flatMap { [digits[Int($0 / 16)], digits[Int($0 % 16)]] })
    }

    @Test func everyByteValueIsTwoLowerCaseDigits() {
        let all = (0...255).map { UInt8($0) }
        #expect(Hex.encode(all) == Self.reference(all))
        for byte in all {
            #expect(Hex.encode([byte]) == Self.reference([byte]))
        }
    }

    @Test func emptyBytesAreTheEmptyString() {
        #expect(Hex.encode([UInt8]()) == "")
        #expect(Hex.encode(EmptyCollection<UInt8>()) == "")
    }

    /// Sequences without contiguous storage take the other path, with the same answer.
    @Test func contiguousAndNonContiguousSequencesSpellTheSame() {
        var generator = SystemRandomNumberGenerator()
        for count in [1, 31, 32, 33, 1000] {
            let bytes = (0..<count).map { _ in UInt8.random(in: .min ... .max, using: &generator) }
            let expected = Self.reference(bytes)
            #expect(Hex.encode(bytes) == expected)
            #expect(Hex.encode(bytes[...]) == expected)
            #expect(Hex.encode(bytes.lazy.map { $0 }) == expected)
            #expect(Hex.encode(AnySequence(bytes)) == expected)
            #expect(bytes.withUnsafeBufferPointer { Hex.encode(buffer: $0) } == expected)
        }
    }

    @Test func decodeReadsEitherCaseAndRoundTrips() {
        let all = (0...255).map { UInt8($0) }
        #expect(Hex.decode(Array(Hex.encode(all).utf8)) == all)
        #expect(Hex.decode(Array(Hex.encode(all).uppercased().utf8)) == all)
        #expect(Hex.decode([UInt8]()) == [])
    }

    @Test(arguments: ["0", "abc", "0g", "g0", " 00", "00 ", "0x00", "é0"])
    func decodeRefusesAnythingButPairsOfHexDigits(_ text: String) {
        #expect(Hex.decode(Array(text.utf8)) == nil)
    }

    @Test func valueOfEachDigit() {
        for (offset, digit) in "0123456789abcdef".utf8.enumerated() {
            #expect(Hex.value(of: digit) == UInt8(offset))
        }
        for (offset, digit) in "ABCDEF".utf8.enumerated() {
            #expect(Hex.value(of: digit) == UInt8(offset + 10))
        }
        for byte in (0...255).map({ UInt8($0) }) where !"0123456789abcdefABCDEF".utf8.contains(byte) {
            #expect(Hex.value(of: byte) == nil)
        }
    }
}
