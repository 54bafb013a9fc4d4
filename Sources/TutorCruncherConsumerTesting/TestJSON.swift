import TutorCruncher

/// JSON for test payloads, written with Swift literals: `["id": 12, "status": "approved"]` keeps
/// key order; decimals are strings, as TutorCruncher sends money (`"25.50"`).
public indirect enum TestJSON: Sendable, ExpressibleByStringLiteral, ExpressibleByStringInterpolation, ExpressibleByIntegerLiteral, ExpressibleByBooleanLiteral,
    ExpressibleByArrayLiteral, ExpressibleByDictionaryLiteral, ExpressibleByNilLiteral
{
    case null
    case bool(Bool)
    case int(Int)
    case string(String)
    case array([TestJSON])
    case object([(String, TestJSON)])

    public init(stringLiteral value: String) { self = .string(value) }
    public init(integerLiteral value: Int) { self = .int(value) }
    public init(booleanLiteral value: Bool) { self = .bool(value) }
    public init(arrayLiteral elements: TestJSON...) { self = .array(elements) }
    public init(dictionaryLiteral elements: (String, TestJSON)...) { self = .object(elements) }
    public init(nilLiteral: ()) { self = .null }

    /// The same as the library's JSON value.
    public var value: JSONValue {
        switch self {
        case .null: .null
        case .bool(let value): .bool(value)
        case .int(let value): .number(String(value))
        case .string(let value): .string(value)
        case .array(let values): .array(values.map(\.value))
        case .object(let members): .object(JSONObject(members.map { JSONObject.Member(key: $0.0, value: $0.1.value) }))
        }
    }

    /// `self` with `overrides` replacing or adding members (objects only).
    func merging(_ overrides: [(String, TestJSON)]) -> TestJSON {
        guard case .object(var members) = self else { return self }
        for (key, value) in overrides {
            if let index = members.firstIndex(where: { $0.0 == key }) { members[index].1 = value } else { members.append((key, value)) }
        }
        return .object(members)
    }
}
