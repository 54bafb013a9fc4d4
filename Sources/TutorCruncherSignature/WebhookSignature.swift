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
    /// An HMAC already keyed (its inner and outer pads hashed): each request copies it instead of
    /// keying a new one (two SHA-256 blocks and a key copy saved per request and key).
    let keyed: HMAC<SHA256>

    /// - Parameter secret: the key as configured in TutorCruncher (its UTF-8 bytes are the HMAC key).
    public init(_ secret: String) {
        self.keyed = HMAC<SHA256>(key: SymmetricKey(data: Array(secret.utf8)))
    }

    /// The authentication code of `body` under this key.
    func authenticationCode(for body: [UInt8]) -> HashedAuthenticationCode<SHA256> {
        var mac = keyed  // a copy: the digest contexts are copied on write
        mac.update(data: body)
        return mac.finalize()
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
            // `==` against bytes is swift-crypto's constant-time comparison.
            if signingKey.authenticationCode(for: body) == expected { valid = true }
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
        // As bytes first: the code is not contiguous storage to `Hex.encode`.
        Hex.encode(key.authenticationCode(for: body).withUnsafeBytes { Array($0) })
    }

    /// 64 hex digits (either case; surrounding spaces ignored) to 32 bytes, or `nil`.
    static func decodeHex(_ text: String) -> [UInt8]? {
        var text = text
        // Native strings are contiguous UTF-8: one pass over the bytes, no index arithmetic.
        return text.withUTF8 { utf8 in
            var start = 0
            var end = utf8.count
            while start < end, utf8[start] == UInt8(ascii: " ") || utf8[start] == 0x09 { start += 1 }
            while end > start, utf8[end - 1] == UInt8(ascii: " ") || utf8[end - 1] == 0x09 { end -= 1 }
            guard end - start == 64 else { return nil }
            var bytes = [UInt8](repeating: 0, count: 32)
            for index in 0..<32 {
                guard let high = Hex.value(of: utf8[start + 2 * index]), let low = Hex.value(of: utf8[start + 2 * index + 1]) else {
                    return nil
                }
                bytes[index] = high << 4 | low
            }
            return bytes
        }
    }
}

/// Lower-case hex SHA-256 of `bytes`.
public func sha256Hex(_ bytes: [UInt8]) -> String {
    Hex.encode(sha256(bytes))
}

/// The SHA-256 of `bytes`: its 32 bytes (which ``sha256Hex(_:)`` spells in hex).
public func sha256(_ bytes: [UInt8]) -> [UInt8] {
    SHA256.hash(data: bytes).withUnsafeBytes { Array($0) }
}
