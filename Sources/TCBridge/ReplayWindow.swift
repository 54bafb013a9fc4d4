import HexCoding
import TutorCruncher

/// The sender's `request_time` as found in a body's root object, read without building a JSON tree.
///
/// Follows the payload rules: `request_time` wins over the older `_request_time` whenever it is
/// present (even when it is not a number), and the last of duplicate keys wins (as Python's `json`
/// and ``JSONObject`` do). Only members of the root object count; nested ones are skipped.
public enum RequestTime: Sendable, Equatable {
    /// Neither key in the root object, or the body is not a JSON object.
    case absent
    /// Present but not a JSON number (a string, `null`, `true`, an object, ...): no usable time.
    case notANumber
    /// A JSON number, in seconds since the epoch. Fractions are kept; numbers beyond `Double`'s range
    /// are `±infinity` (never a crash, never an integer overflow).
    case seconds(Double)

    /// The time of a body ``WebhookPayload/scan(_:parser:)`` read as events: the same answer
    /// ``scan(_:)`` gives for it (a valid JSON object, so both read the same root members), without
    /// scanning the body a second time.
    public init(scanned batch: EventSummaries) {
        guard batch.hasRequestTime else {
            self = .absent
            return
        }
        // A JSON number's literal always converts; out-of-range magnitudes become ±infinity.
        if case .number(let literal) = batch.requestTime, let seconds = Double(literal) {
            self = .seconds(seconds)
        } else {
            self = .notANumber
        }
    }

    /// Scans `body`. Linear in its size, no recursion, no allocation proportional to nesting; any bytes
    /// (invalid JSON, truncated input, invalid UTF-8) give an answer. On malformed input the value
    /// found before the damage (if any) is returned. Pure and thread-safe.
    public static func scan(_ body: [UInt8]) -> RequestTime {
        body.withUnsafeBufferPointer { bytes in
            var scanner = RootScanner(bytes: bytes)
            scanner.run()
            return scanner.current ?? scanner.legacy ?? .absent
        }
    }
}

/// The replay window: a verified body whose `request_time` is older than ``maxAge`` or further in
/// the future than ``maxFutureSkew`` is refused. Bodies without a usable time are let through (the
/// newest documentation example has none), and the caller counts them. Pure value; thread-safe.
public struct ReplayWindow: Sendable, Equatable {
    /// Oldest accepted `request_time`, in seconds before now. TutorCruncher's retries reuse the
    /// original time for about 1,111 s (1 + 10 + 100 + 1000), so this must stay well above that.
    public var maxAge: Int
    /// Furthest accepted `request_time` ahead of this machine's clock, in seconds (clock skew).
    public var maxFutureSkew: Int

    /// - Parameters: both in whole seconds, not negative.
    public init(maxAge: Int = 3600, maxFutureSkew: Int = 300) {
        precondition(maxAge >= 0 && maxFutureSkew >= 0, "replay window bounds must not be negative")
        self.maxAge = maxAge
        self.maxFutureSkew = maxFutureSkew
    }

    /// Every body accepted by this window arrives within this span of its `request_time`, so a dedup
    /// window at least this long makes a captured request impossible to publish twice.
    public var span: Int { maxAge + maxFutureSkew }

    public enum Verdict: Sendable, Equatable {
        /// Within the window; `age` in seconds (negative: slightly in the future).
        case fresh(age: Double)
        /// No `request_time`/`_request_time`: accept, and count.
        case absent
        /// A `request_time` that is not a number: accept, and count.
        case notANumber
        /// Older than ``ReplayWindow/maxAge``: refuse.
        case tooOld(age: Double)
        /// Further ahead than ``ReplayWindow/maxFutureSkew``: refuse.
        case inFuture(ahead: Double)

        /// Whether the request may proceed.
        public var accepted: Bool {
            switch self {
            case .fresh, .absent, .notANumber: true
            case .tooOld, .inFuture: false
            }
        }
    }

    /// Judges `time` against `now` (seconds since the epoch).
    public func check(_ time: RequestTime, now: Double) -> Verdict {
        switch time {
        case .absent: return .absent
        case .notANumber: return .notANumber
        case .seconds(let seconds):
            guard !seconds.isNaN else { return .notANumber }
            let age = now - seconds  // Double arithmetic: infinities compare correctly, nothing traps
            if age > Double(maxAge) { return .tooOld(age: age) }
            if -age > Double(maxFutureSkew) { return .inFuture(ahead: -age) }
            return .fresh(age: age)
        }
    }

    /// Scans `body` and judges its time against `now`.
    public func check(body: [UInt8], now: Double) -> Verdict {
        check(RequestTime.scan(body), now: now)
    }
}

// MARK: - The scanner

private let quote = UInt8(ascii: "\"")
private let backslash = UInt8(ascii: "\\")

/// A forward-only scan of the root object's members. Values other than the two time keys are
/// skipped by bracket counting (strings honoured), so nesting depth costs nothing.
private struct RootScanner {
    let bytes: UnsafeBufferPointer<UInt8>
    var index = 0
    /// Last `request_time` seen.
    var current: RequestTime?
    /// Last `_request_time` seen.
    var legacy: RequestTime?

    init(bytes: UnsafeBufferPointer<UInt8>) { self.bytes = bytes }

    enum Key { case current, legacy, other }

    mutating func run() {
        skipWhitespace()
        // A UTF-8 byte order mark is not JSON, but tolerate it.
        if index + 3 <= bytes.count, bytes[index] == 0xEF, bytes[index + 1] == 0xBB, bytes[index + 2] == 0xBF { index += 3 }
        skipWhitespace()
        guard consume(UInt8(ascii: "{")) else { return }
        skipWhitespace()
        if consume(UInt8(ascii: "}")) { return }
        while true {
            skipWhitespace()
            guard let key = readKey() else { return }
            skipWhitespace()
            guard consume(UInt8(ascii: ":")) else { return }
            skipWhitespace()
            switch key {
            case .current:
                guard let value = readTimeValue() else { return }
                current = value
            case .legacy:
                guard let value = readTimeValue() else { return }
                legacy = value
            case .other:
                guard skipValue() else { return }
            }
            skipWhitespace()
            if consume(UInt8(ascii: ",")) { continue }
            return  // `}` or damage: either way the root object is over
        }
    }

    mutating func skipWhitespace() {
        while index < bytes.count {
            switch bytes[index] {
            case 0x20, 0x09, 0x0A, 0x0D: index += 1
            default: return
            }
        }
    }

    mutating func consume(_ byte: UInt8) -> Bool {
        guard index < bytes.count, bytes[index] == byte else { return false }
        index += 1
        return true
    }

    /// Reads a member name; `nil` when there is no complete string here.
    mutating func readKey() -> Key? {
        guard consume(quote) else { return nil }
        let start = index
        var escaped = false
        while index < bytes.count, bytes[index] != quote {
            if bytes[index] == backslash {
                escaped = true
                index += 1
            }
            index += 1
        }
        guard index < bytes.count else { return nil }
        let raw = UnsafeBufferPointer(rebasing: bytes[start..<index])
        index += 1
        if escaped {
            guard let decoded = Self.unescapeASCII(raw) else { return .other }
            return Self.classify(decoded)
        }
        return raw.count > Self.legacyName.count ? .other : Self.classify(Array(raw))
    }

    static let currentName = Array("request_time".utf8)
    static let legacyName = Array("_request_time".utf8)

    static func classify(_ name: [UInt8]) -> Key {
        if name == currentName { return .current }
        if name == legacyName { return .legacy }
        return .other
    }

    /// Decodes a short escaped name; non-ASCII code points become 0xFF (they can never match).
    /// `nil` for names too long to be one of ours or with a broken escape.
    static func unescapeASCII(_ raw: UnsafeBufferPointer<UInt8>) -> [UInt8]? {
        guard raw.count <= 6 * 14 else { return nil }
        var out: [UInt8] = []
        var position = 0
        while position < raw.count {
            let byte = raw[position]
            position += 1
            guard byte == backslash else {
                out.append(byte)
                continue
            }
            guard position < raw.count else { return nil }
            let kind = raw[position]
            position += 1
            switch kind {
            case UInt8(ascii: "u"):
                guard position + 4 <= raw.count else { return nil }
                var code: UInt32 = 0
                for offset in 0..<4 {
                    guard let nibble = Hex.value(of: raw[position + offset]) else { return nil }
                    code = code << 4 | UInt32(nibble)
                }
                position += 4
                out.append(code < 0x80 ? UInt8(code) : 0xFF)
            case UInt8(ascii: "b"): out.append(0x08)
            case UInt8(ascii: "f"): out.append(0x0C)
            case UInt8(ascii: "n"): out.append(0x0A)
            case UInt8(ascii: "r"): out.append(0x0D)
            case UInt8(ascii: "t"): out.append(0x09)
            default: out.append(kind)  // \" \\ \/ (and anything else, verbatim)
            }
        }
        return out
    }

    /// Reads the value of a time key: a number, or any other value (`.notANumber`). `nil` on damage.
    mutating func readTimeValue() -> RequestTime? {
        guard index < bytes.count else { return nil }
        let first = bytes[index]
        guard first == UInt8(ascii: "-") || (UInt8(ascii: "0")...UInt8(ascii: "9")).contains(first) else {
            return skipValue() ? .notANumber : nil
        }
        let start = index
        guard scanNumber() else { return nil }
        let text = String(decoding: UnsafeBufferPointer(rebasing: bytes[start..<index]), as: UTF8.self)
        // The grammar was checked, so this parses; out-of-range magnitudes become ±infinity.
        guard let value = Double(text) else { return .notANumber }
        return .seconds(value)
    }

    /// Advances over one JSON number (RFC 8259 grammar); false if it is malformed.
    mutating func scanNumber() -> Bool {
        _ = consume(UInt8(ascii: "-"))
        guard index < bytes.count else { return false }
        if bytes[index] == UInt8(ascii: "0") {
            index += 1
        } else {
            guard skipDigits() > 0 else { return false }
        }
        if consume(UInt8(ascii: ".")) {
            guard skipDigits() > 0 else { return false }
        }
        if index < bytes.count, bytes[index] == UInt8(ascii: "e") || bytes[index] == UInt8(ascii: "E") {
            index += 1
            if !consume(UInt8(ascii: "+")) { _ = consume(UInt8(ascii: "-")) }
            guard skipDigits() > 0 else { return false }
        }
        return true
    }

    mutating func skipDigits() -> Int {
        let start = index
        while index < bytes.count, (UInt8(ascii: "0")...UInt8(ascii: "9")).contains(bytes[index]) { index += 1 }
        return index - start
    }

    /// Skips one value of any kind without validating its inside. False when the input ends first.
    mutating func skipValue() -> Bool {
        guard index < bytes.count else { return false }
        switch bytes[index] {
        case quote:
            return skipString()
        case UInt8(ascii: "{"), UInt8(ascii: "["):
            var depth = 0
            while index < bytes.count {
                switch bytes[index] {
                case quote:
                    guard skipString() else { return false }
                    continue
                case UInt8(ascii: "{"), UInt8(ascii: "["):
                    depth += 1
                case UInt8(ascii: "}"), UInt8(ascii: "]"):
                    depth -= 1
                    if depth == 0 {
                        index += 1
                        return true
                    }
                default:
                    break
                }
                index += 1
            }
            return false
        default:
            // A number or literal (or garbage): up to the next delimiter.
            let start = index
            while index < bytes.count {
                switch bytes[index] {
                case UInt8(ascii: ","), UInt8(ascii: "}"), UInt8(ascii: "]"), 0x20, 0x09, 0x0A, 0x0D:
                    return index > start
                default:
                    index += 1
                }
            }
            return index > start
        }
    }

    /// Skips a string starting at the opening quote. False when it is not terminated.
    mutating func skipString() -> Bool {
        index += 1
        while index < bytes.count {
            switch bytes[index] {
            case quote:
                index += 1
                return true
            case backslash:
                index += 2
            default:
                index += 1
            }
        }
        return false
    }
}
