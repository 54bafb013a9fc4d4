import Crypto
import HexCoding

// Crypto's APIs take `DataProtocol`; FoundationEssentials provides it without the rest of Foundation.
#if canImport(FoundationEssentials)
import FoundationEssentials
#else
import Foundation
#endif

/// An integration's private API key, used as the HMAC key. Its description never shows the secret.
public struct WebhookSigningKey: Sendable, CustomStringConvertible {
    let key: SymmetricKey

    /// - Parameter secret: the key as configured in TutorCruncher (its UTF-8 bytes are the HMAC key).
    public init(_ secret: String) {
        self.key = SymmetricKey(data: Array(secret.utf8))
    }

    public var description: String { "WebhookSigningKey(<redacted>)" }
}

/// The outcome of checking a request's `webhook-signature` header.
public enum SignatureVerification: Sendable, Equatable {
    case valid
    /// No `webhook-signature` header.
    case missing
    /// The header is not 64 hexadecimal digits.
    case malformed
    /// Well-formed, but not the HMAC of these bytes under any configured key.
    case mismatch
}

/// Verifies and computes TutorCruncher webhook signatures: lower-case hex HMAC-SHA256 of the exact
/// body bytes, keyed with the integration's private API key.
///
/// Several keys may be configured (key rotation): a signature valid under any of them is accepted.
/// Comparison is constant-time. Thread-safe.
public struct WebhookVerifier: Sendable {
    public let keys: [WebhookSigningKey]

    public init(keys: [WebhookSigningKey]) {
        precondition(!keys.isEmpty, "at least one signing key is required")
        self.keys = keys
    }

    public init(key: WebhookSigningKey) { self.init(keys: [key]) }

    /// Checks `header` (the raw header value, or `nil` when absent) against `body`.
    public func verify(body: [UInt8], signatureHeader header: String?) -> SignatureVerification {
        guard let header else { return .missing }
        guard let expected = Self.decodeHex(header) else { return .malformed }
        var valid = false
        for signingKey in keys {
            // Evaluate every key so the time taken does not reveal which one matched.
            if HMAC<SHA256>.isValidAuthenticationCode(expected, authenticating: body, using: signingKey.key) { valid = true }
        }
        return valid ? .valid : .mismatch
    }

    /// What can be said of a `webhook-signature` header before the body is read: `.missing`,
    /// `.malformed`, or `nil` when it is well-formed (64 hex digits) and the body must be checked.
    public static func precheck(signatureHeader header: String?) -> SignatureVerification? {
        guard let header else { return .missing }
        return decodeHex(header) == nil ? .malformed : nil
    }

    /// The signature TutorCruncher would send for `body`, signed with the first key.
    public func signature(for body: [UInt8]) -> String {
        Self.signature(for: body, key: keys[0])
    }

    public static func signature(for body: [UInt8], key: WebhookSigningKey) -> String {
        Hex.encode(HMAC<SHA256>.authenticationCode(for: body, using: key.key))
    }

    /// 64 hex digits (either case; surrounding spaces ignored) to 32 bytes, or `nil`.
    static func decodeHex(_ text: String) -> [UInt8]? {
        var utf8 = Substring(text).utf8[...]
        while utf8.first == UInt8(ascii: " ") || utf8.first == 0x09 { utf8 = utf8.dropFirst() }
        while utf8.last == UInt8(ascii: " ") || utf8.last == 0x09 { utf8 = utf8.dropLast() }
        guard utf8.count == 64 else { return nil }
        var bytes: [UInt8] = []
        bytes.reserveCapacity(32)
        var iterator = utf8.makeIterator()
        while let high = iterator.next(), let low = iterator.next() {
            guard let h = Hex.value(of: high), let l = Hex.value(of: low) else { return nil }
            bytes.append(h << 4 | l)
        }
        return bytes
    }
}

/// Lower-case hex SHA-256 of `bytes`.
public func sha256Hex(_ bytes: [UInt8]) -> String {
    Hex.encode(SHA256.hash(data: bytes))
}
