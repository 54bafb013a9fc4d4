import HexCoding
@testable import TCBridge
import Testing
import TutorCruncherSignature

/// The dedup window's key: one digest whether it comes from a body's hash, its 32 bytes or its hex.
@Suite struct BodyDigestTests {
    static let bodies: [[UInt8]] = [[], Array("{\"events\": []}".utf8), (0..<5_000).map { UInt8(truncatingIfNeeded: $0 &* 31) }]

    @Test(arguments: bodies)
    func theHashTheBytesAndTheHexGiveOneDigest(body: [UInt8]) throws {
        let hash = sha256(body)
        #expect(Hex.encode(hash) == sha256Hex(body))
        let fromHash = BodyDigest(sha256: hash)
        #expect(BodyDigest(bytes: hash) == fromHash)
        #expect(BodyDigest(hex: sha256Hex(body)) == fromHash)
        #expect(BodyDigest(hex: sha256Hex(body).uppercased()) == fromHash)
        #expect(fromHash.bytes == hash, "the words keep the bytes' order")
    }

    @Test func digestsOfDifferentBodiesDiffer() {
        let digests = Self.bodies.map { BodyDigest(sha256: sha256($0)) }
        #expect(Set(digests).count == digests.count)
    }

    @Test(arguments: [
        "", String(repeating: "a", count: 63), String(repeating: "a", count: 65),
        String(repeating: "a", count: 63) + "g", "z" + String(repeating: "a", count: 63),
        String(repeating: "a", count: 62) + "é",
    ])
    func anythingButSixtyFourHexDigitsIsNoDigest(hex: String) {
        #expect(BodyDigest(hex: hex) == nil)
    }

    @Test func anythingButThirtyTwoBytesIsNoDigest() {
        #expect(BodyDigest(bytes: [UInt8](repeating: 1, count: 31)) == nil)
        #expect(BodyDigest(bytes: [UInt8](repeating: 1, count: 33)) == nil)
        #expect(BodyDigest(bytes: [UInt8](repeating: 1, count: 32)) != nil)
    }
}
