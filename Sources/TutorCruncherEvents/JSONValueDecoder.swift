#if canImport(FoundationEssentials)
import FoundationEssentials
#else
import Foundation
#endif
import TutorCruncher

/// Decodes `Decodable` types straight from a lossless ``JSONValue``.
///
/// Beyond the standard types it reads, the way TutorCruncher writes them:
/// - `Decimal` from a number literal or a decimal string, parsed from the text, never through `Double`;
/// - `Date` from ISO-8601 text (microseconds kept) or epoch seconds;
/// - `Duration` from `"D HH:MM:SS[.ffffff]"` / `"HH:MM:SS"` text or a number of seconds;
/// - `JSONValue` as the raw value itself.
///
/// Tolerant by design: a missing key, `null`, or a value of the wrong shape in an *optional*
/// property decodes as `nil` instead of failing the whole object. Integers also decode from integer
/// strings. Pure; thread-safe.
public struct JSONValueDecoder: Sendable {
    public init() {}

    public func decode<T: Decodable>(_ type: T.Type, from value: JSONValue) throws -> T {
        try ValueDecoder(value: value, codingPath: []).decodeValue(type)
    }
}

private struct AnyKey: CodingKey {
    var stringValue: String
    var intValue: Int?
    init(stringValue: String) { self.stringValue = stringValue }
    init(intValue: Int) {
        self.stringValue = "\(intValue)"
        self.intValue = intValue
    }
}

private struct ValueDecoder: Decoder {
    let value: JSONValue
    let codingPath: [any CodingKey]
    var userInfo: [CodingUserInfoKey: Any] { [:] }

    func container<Key: CodingKey>(keyedBy type: Key.Type) throws -> KeyedDecodingContainer<Key> {
        guard case .object(let object) = value else { throw mismatch([String: JSONValue].self) }
        return KeyedDecodingContainer(KeyedContainer<Key>(object: object, codingPath: codingPath))
    }

    func unkeyedContainer() throws -> any UnkeyedDecodingContainer {
        guard case .array(let elements) = value else { throw mismatch([JSONValue].self) }
        return UnkeyedContainer(elements: elements, codingPath: codingPath)
    }

    func singleValueContainer() throws -> any SingleValueDecodingContainer { SingleContainer(decoder: self) }

    func mismatch(_ type: Any.Type) -> DecodingError {
        DecodingError.typeMismatch(type, .init(codingPath: codingPath, debugDescription: "found \(value.kindDescription)"))
    }

    func decodeValue<T: Decodable>(_ type: T.Type) throws -> T {
        if type == JSONValue.self { return value as! T }
        if type == Decimal.self { return try decodeDecimal() as! T }
        if type == Date.self { return try decodeDate() as! T }
        if type == Duration.self { return try decodeDuration() as! T }
        return try T(from: self)
    }

    func decodeDecimal() throws -> Decimal {
        let text: String
        switch value {
        case .number(let literal): text = literal
        case .string(let string): text = string.trimmingSpaces
        default: throw mismatch(Decimal.self)
        }
        guard !text.isEmpty, let decimal = Decimal(string: text, locale: nil), !decimal.isNaN else {
            throw DecodingError.dataCorrupted(.init(codingPath: codingPath, debugDescription: "not a decimal: \(text)"))
        }
        return decimal
    }

    func decodeDate() throws -> Date {
        switch value {
        case .string(let text):
            guard let timestamp = UTCTimestamp(iso8601: text) else {
                throw DecodingError.dataCorrupted(.init(codingPath: codingPath, debugDescription: "not an ISO-8601 date: \(text)"))
            }
            return timestamp.date
        case .number(let literal):
            guard let seconds = Double(literal) else { throw mismatch(Date.self) }
            return Date(timeIntervalSince1970: seconds)
        default:
            throw mismatch(Date.self)
        }
    }

    func decodeDuration() throws -> Duration {
        switch value {
        case .string(let text):
            guard let duration = Duration(tutorCruncher: text) else {
                throw DecodingError.dataCorrupted(.init(codingPath: codingPath, debugDescription: "not a duration: \(text)"))
            }
            return duration
        case .number(let literal):
            guard let seconds = Double(literal) else { throw mismatch(Duration.self) }
            // Int64 milliseconds hold about 292 million years; beyond that (or inf/nan) the
            // number is not a duration, and converting it would trap.
            let milliseconds = (seconds * 1000).rounded()
            guard milliseconds.isFinite, abs(milliseconds) < 9.0e18 else {
                throw DecodingError.dataCorrupted(.init(codingPath: codingPath, debugDescription: "duration out of range: \(literal)"))
            }
            return .milliseconds(Int64(milliseconds))
        default:
            throw mismatch(Duration.self)
        }
    }
}

private struct KeyedContainer<Key: CodingKey>: KeyedDecodingContainerProtocol {
    let object: JSONObject
    let codingPath: [any CodingKey]

    var allKeys: [Key] { object.keys.compactMap { Key(stringValue: $0) } }

    func contains(_ key: Key) -> Bool { object[key.stringValue] != nil }

    private func child(_ key: Key) throws -> ValueDecoder {
        guard let value = object[key.stringValue] else {
            throw DecodingError.keyNotFound(key, .init(codingPath: codingPath, debugDescription: "no \"\(key.stringValue)\""))
        }
        return ValueDecoder(value: value, codingPath: codingPath + [key])
    }

    func decodeNil(forKey key: Key) throws -> Bool { object[key.stringValue] == nil || object[key.stringValue] == .null }

    func decode<T: Decodable>(_ type: T.Type, forKey key: Key) throws -> T { try child(key).decodeValue(type) }

    /// Tolerant: absent, null or unreadable values of optional properties become `nil`.
    func decodeIfPresent<T: Decodable>(_ type: T.Type, forKey key: Key) throws -> T? {
        guard let value = object[key.stringValue], value != .null else { return nil }
        return try? ValueDecoder(value: value, codingPath: codingPath + [key]).decodeValue(type)
    }

    func decode(_ type: Bool.Type, forKey key: Key) throws -> Bool { try child(key).decodeValue(type) }
    func decode(_ type: String.Type, forKey key: Key) throws -> String { try child(key).decodeValue(type) }
    func decode(_ type: Double.Type, forKey key: Key) throws -> Double { try child(key).decodeValue(type) }
    func decode(_ type: Int.Type, forKey key: Key) throws -> Int { try child(key).decodeValue(type) }
    func decode(_ type: Int64.Type, forKey key: Key) throws -> Int64 { try child(key).decodeValue(type) }

    func decodeIfPresent(_ type: Bool.Type, forKey key: Key) throws -> Bool? { try decodeIfPresent(Wrapped<Bool>.self, forKey: key)?.value }
    func decodeIfPresent(_ type: String.Type, forKey key: Key) throws -> String? { try decodeIfPresent(Wrapped<String>.self, forKey: key)?.value }
    func decodeIfPresent(_ type: Double.Type, forKey key: Key) throws -> Double? { try decodeIfPresent(Wrapped<Double>.self, forKey: key)?.value }
    func decodeIfPresent(_ type: Int.Type, forKey key: Key) throws -> Int? { try decodeIfPresent(Wrapped<Int>.self, forKey: key)?.value }
    func decodeIfPresent(_ type: Int64.Type, forKey key: Key) throws -> Int64? { try decodeIfPresent(Wrapped<Int64>.self, forKey: key)?.value }

    func nestedContainer<NestedKey: CodingKey>(keyedBy type: NestedKey.Type, forKey key: Key) throws -> KeyedDecodingContainer<NestedKey> {
        try child(key).container(keyedBy: type)
    }

    func nestedUnkeyedContainer(forKey key: Key) throws -> any UnkeyedDecodingContainer { try child(key).unkeyedContainer() }
    func superDecoder() throws -> any Decoder { ValueDecoder(value: .object(object), codingPath: codingPath) }
    func superDecoder(forKey key: Key) throws -> any Decoder { try child(key) }
}

/// Routes primitive `decodeIfPresent` overloads through the generic, tolerant path.
private struct Wrapped<T: Decodable>: Decodable {
    let value: T
    init(from decoder: any Decoder) throws { value = try decoder.singleValueContainer().decode(T.self) }
}

private struct UnkeyedContainer: UnkeyedDecodingContainer {
    let elements: [JSONValue]
    let codingPath: [any CodingKey]
    var currentIndex = 0

    init(elements: [JSONValue], codingPath: [any CodingKey]) {
        self.elements = elements
        self.codingPath = codingPath
    }

    var count: Int? { elements.count }
    var isAtEnd: Bool { currentIndex >= elements.count }

    mutating func next() throws -> ValueDecoder {
        guard !isAtEnd else {
            throw DecodingError.valueNotFound(JSONValue.self, .init(codingPath: codingPath, debugDescription: "array exhausted"))
        }
        defer { currentIndex += 1 }
        return ValueDecoder(value: elements[currentIndex], codingPath: codingPath + [AnyKey(intValue: currentIndex)])
    }

    mutating func decodeNil() throws -> Bool {
        guard !isAtEnd, elements[currentIndex] == .null else { return false }
        currentIndex += 1
        return true
    }

    mutating func decode<T: Decodable>(_ type: T.Type) throws -> T { try next().decodeValue(type) }
    mutating func nestedContainer<NestedKey: CodingKey>(keyedBy type: NestedKey.Type) throws -> KeyedDecodingContainer<NestedKey> {
        try next().container(keyedBy: type)
    }
    mutating func nestedUnkeyedContainer() throws -> any UnkeyedDecodingContainer { try next().unkeyedContainer() }
    mutating func superDecoder() throws -> any Decoder { try next() }
}

private struct SingleContainer: SingleValueDecodingContainer {
    let decoder: ValueDecoder
    var codingPath: [any CodingKey] { decoder.codingPath }

    func decodeNil() -> Bool { decoder.value == .null }

    func decode(_ type: Bool.Type) throws -> Bool {
        guard case .bool(let flag) = decoder.value else { throw decoder.mismatch(type) }
        return flag
    }

    func decode(_ type: String.Type) throws -> String {
        guard case .string(let text) = decoder.value else { throw decoder.mismatch(type) }
        return text
    }

    func decode(_ type: Double.Type) throws -> Double { try number(type) { Double($0) } }
    func decode(_ type: Float.Type) throws -> Float { try number(type) { Float($0) } }
    func decode(_ type: Int.Type) throws -> Int { try integer(type) }
    func decode(_ type: Int8.Type) throws -> Int8 { try integer(type) }
    func decode(_ type: Int16.Type) throws -> Int16 { try integer(type) }
    func decode(_ type: Int32.Type) throws -> Int32 { try integer(type) }
    func decode(_ type: Int64.Type) throws -> Int64 { try integer(type) }
    func decode(_ type: UInt.Type) throws -> UInt { try integer(type) }
    func decode(_ type: UInt8.Type) throws -> UInt8 { try integer(type) }
    func decode(_ type: UInt16.Type) throws -> UInt16 { try integer(type) }
    func decode(_ type: UInt32.Type) throws -> UInt32 { try integer(type) }
    func decode(_ type: UInt64.Type) throws -> UInt64 { try integer(type) }
    func decode<T: Decodable>(_ type: T.Type) throws -> T { try decoder.decodeValue(type) }

    private func number<N>(_ type: N.Type, _ parse: (String) -> N?) throws -> N {
        switch decoder.value {
        case .number(let literal): if let value = parse(literal) { return value }
        case .string(let text): if let value = parse(text.trimmingSpaces) { return value }
        default: break
        }
        throw decoder.mismatch(type)
    }

    /// Integers from integer literals or integer strings (`"12"`); `5.0` is accepted, `5.5` is not.
    private func integer<I: FixedWidthInteger>(_ type: I.Type) throws -> I {
        let text: String
        switch decoder.value {
        case .number(let literal): text = literal
        case .string(let string): text = string.trimmingSpaces
        default: throw decoder.mismatch(type)
        }
        if let value = I(text) { return value }
        // `5.0` or `1e3`: accepted when integral and small enough to be exact in a Double.
        if let double = Double(text), double.rounded() == double, abs(double) < 9_007_199_254_740_992, let value = I(exactly: double) {
            return value
        }
        throw decoder.mismatch(type)
    }
}

extension JSONValue {
    var kindDescription: String {
        switch self {
        case .null: "null"
        case .bool: "a boolean"
        case .number(let literal): "the number \(literal)"
        case .string: "a string"
        case .array: "an array"
        case .object: "an object"
        }
    }
}

extension String {
    var trimmingSpaces: String {
        var slice = Substring(self)
        while slice.first == " " { slice = slice.dropFirst() }
        while slice.last == " " { slice = slice.dropLast() }
        return String(slice)
    }
}

extension UTCTimestamp {
    /// As a `Date`, microseconds kept (built from integers, so no precision is lost to 1970-based doubles).
    public var date: Date {
        let sinceReference = secondsSinceEpoch - 978_307_200
        return Date(timeIntervalSinceReferenceDate: Double(sinceReference) + Double(microseconds) / 1_000_000)
    }
}

extension Duration {
    /// Parses TutorCruncher's durations: `"2 09:00:00"` (days, hours:minutes:seconds), `"00:45:00"`,
    /// optionally with a fraction (`"00:00:01.5"`) or a leading minus. `nil` when malformed.
    public init?(tutorCruncher text: String) {
        var rest = Substring(text.trimmingSpaces)
        var negative = false
        if rest.first == "-" {
            negative = true
            rest = rest.dropFirst()
        }
        /// Digits only (no sign), as a non-negative Int64; `nil` otherwise or on overflow.
        func digits(_ text: Substring) -> Int64? {
            guard !text.isEmpty, text.allSatisfy({ $0.isASCII && $0.isNumber }) else { return nil }
            return Int64(text)
        }
        var days: Int64 = 0
        if let space = rest.firstIndex(of: " ") {
            guard let parsedDays = digits(rest[..<space]) else { return nil }
            days = parsedDays
            rest = rest[rest.index(after: space)...].drop { $0 == " " }
        }
        let parts = rest.split(separator: ":", omittingEmptySubsequences: false)
        guard parts.count == 3, let hours = digits(parts[0]), let minutes = digits(parts[1]), minutes < 60 else { return nil }
        let secondParts = parts[2].split(separator: ".", omittingEmptySubsequences: false)
        guard (1...2).contains(secondParts.count), let seconds = digits(secondParts[0]), seconds < 60 else { return nil }
        var microseconds: Int64 = 0
        if secondParts.count == 2 {
            let fraction = secondParts[1].prefix(6)
            guard let value = digits(fraction) else { return nil }
            microseconds = value * Int64(pow10(6 - fraction.count))
        }
        // Overflow (e.g. "9999999999999999 00:00:00") means the text is not a duration.
        let (dayHours, o1) = days.multipliedReportingOverflow(by: 24)
        let (allHours, o2) = dayHours.addingReportingOverflow(hours)
        let (hourMinutes, o3) = allHours.multipliedReportingOverflow(by: 60)
        let (allMinutes, o4) = hourMinutes.addingReportingOverflow(minutes)
        let (minuteSeconds, o5) = allMinutes.multipliedReportingOverflow(by: 60)
        let (allSeconds, o6) = minuteSeconds.addingReportingOverflow(seconds)
        guard !(o1 || o2 || o3 || o4 || o5 || o6) else { return nil }
        let total = Duration.seconds(allSeconds) + .microseconds(microseconds)
        self = negative ? .zero - total : total
    }
}

private func pow10(_ exponent: Int) -> Int {
    var result = 1
    for _ in 0..<exponent { result *= 10 }
    return result
}
