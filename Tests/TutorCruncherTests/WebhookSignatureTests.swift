import Testing
import TutorCruncher
import TutorCruncherSignature

@Suite struct WebhookSignatureTests {
    let body = Array(#"{"request_time": 1700000000, "events": []}"#.utf8)
    let verifier = WebhookVerifier(key: WebhookSigningKey("secret-key"))
    /// Computed independently: python3 -c "import hmac,hashlib;print(hmac.new(b'secret-key', body, hashlib.sha256).hexdigest())"
    let knownSignature = "ae27acb67efd871b7f664d38a2b80891ef0ebb650cad91c2e4307e1d00deb36c"

    @Test func signatureMatchesPythonHMAC() {
        #expect(WebhookVerifier.signature(for: body, key: WebhookSigningKey("secret-key")) == knownSignature)
    }

    @Test func validSignatureIsAccepted() {
        #expect(verifier.verify(body: body, signatureHeader: knownSignature) == .valid)
    }

    @Test func upperCaseHexAndSurroundingSpacesAreAccepted() {
        #expect(verifier.verify(body: body, signatureHeader: knownSignature.uppercased()) == .valid)
        #expect(verifier.verify(body: body, signatureHeader: " \(knownSignature) ") == .valid)
    }

    @Test func wrongKeyIsAMismatch() {
        let other = WebhookVerifier.signature(for: body, key: WebhookSigningKey("another-key"))
        #expect(verifier.verify(body: body, signatureHeader: other) == .mismatch)
    }

    @Test func missingHeader() {
        #expect(verifier.verify(body: body, signatureHeader: nil) == .missing)
    }

    @Test(arguments: ["", "abc", String(repeating: "a", count: 63), String(repeating: "a", count: 65)])
    func wrongLengthIsMalformed(header: String) {
        #expect(verifier.verify(body: body, signatureHeader: header) == .malformed)
    }

    @Test func truncatedSignatureIsMalformed() {
        #expect(verifier.verify(body: body, signatureHeader: String(knownSignature.dropLast(2))) == .malformed)
    }

    @Test func nonHexIsMalformed() {
        let nonHex = "zz" + knownSignature.dropFirst(2)
        #expect(verifier.verify(body: body, signatureHeader: nonHex) == .malformed)
        #expect(verifier.verify(body: body, signatureHeader: "sha256=" + knownSignature.dropFirst(7)) == .malformed)
    }

    @Test func surroundingSpacesAndTabsAndUpperCaseAreAccepted() {
        #expect(verifier.verify(body: body, signatureHeader: " \t\(knownSignature.uppercased()) \t") == .valid)
        #expect(WebhookVerifier.precheck(signatureHeader: "\t\(knownSignature)  ") == nil)
    }

    @Test(arguments: [
        String(repeating: "é", count: 32),  // 64 bytes of UTF-8, no hex digit
        String(repeating: "a", count: 62) + "é",  // 64 bytes with a multi-byte character at the end
        " " + String(repeating: "a", count: 32) + " " + String(repeating: "a", count: 32),  // a space inside
        String(repeating: "a", count: 63) + "\u{0}",
    ])
    func anythingButSixtyFourHexDigitsIsMalformed(header: String) {
        #expect(verifier.verify(body: body, signatureHeader: header) == .malformed)
        #expect(WebhookVerifier.precheck(signatureHeader: header) == .malformed)
    }

    @Test func oneByteDifferenceIsAMismatch() {
        var changed = body
        changed[changed.count - 3] = UInt8(ascii: "1")
        #expect(verifier.verify(body: changed, signatureHeader: knownSignature) == .mismatch)
    }

    @Test func whitespaceDifferenceIsAMismatch() {
        let reformatted = Array(#"{"request_time":1700000000,"events":[]}"#.utf8)
        #expect(verifier.verify(body: reformatted, signatureHeader: knownSignature) == .mismatch)
        #expect(verifier.verify(body: body + [0x0A], signatureHeader: knownSignature) == .mismatch)
    }

    @Test func anyOfSeveralKeysIsAcceptedDuringRotation() {
        let rotating = WebhookVerifier(keys: [WebhookSigningKey("new-key"), WebhookSigningKey("secret-key")])
        #expect(rotating.verify(body: body, signatureHeader: knownSignature) == .valid)
        #expect(rotating.signature(for: body) == WebhookVerifier.signature(for: body, key: WebhookSigningKey("new-key")))
    }

    @Test func keyDescriptionDoesNotRevealTheSecret() {
        #expect(!"\(WebhookSigningKey("secret-key"))".contains("secret-key"))
    }
}
