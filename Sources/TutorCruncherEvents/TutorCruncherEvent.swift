#if canImport(FoundationEssentials)
import FoundationEssentials
#else
import Foundation
#endif
import TutorCruncher

/// One TutorCruncher event as the bridge publishes it (envelope format version 1), decoded.
///
/// Every field is optional where TutorCruncher may send `null` or omit it. The whole envelope stays
/// available as ``raw``, so no field is ever out of reach, and ``subject`` keeps its raw JSON too.
public struct TutorCruncherEvent: Sendable, Decodable {
    /// Stable id: hex SHA-256 of the webhook body, `-`, the event's index. Equal for redeliveries and
    /// sender retries of the same bytes: the key for idempotent consumers.
    public let eventID: String
    public let action: TutorCruncherAction
    /// Human text, e.g. "Raised an Invoice".
    public let verb: String?
    /// When it happened in TutorCruncher (microseconds kept).
    public let timestamp: Date?
    /// The branch (tenant) id; absent in older payloads.
    public let branch: Int?
    /// Who did it.
    public let actor: Actor?
    /// Free text; old/new values of changes live only here.
    public let extraMessage: String?
    /// The webhook's `request_time` (`_request_time` in older bodies).
    public let requestTime: Date?
    /// When the bridge received the webhook.
    public let receivedAt: Date?
    /// The record the event is about; `nil` for actions without one.
    public let subject: Subject?
    /// The whole envelope as received.
    public let raw: JSONValue

    /// The user who performed the action.
    public struct Actor: Sendable, Decodable, Hashable {
        public let name: String?
        public let id: Int?
        public let userID: Int?
        public let url: String?

        enum CodingKeys: String, CodingKey {
            case name, id, url
            case userID = "user_id"
        }
    }

    enum CodingKeys: String, CodingKey {
        case action, verb, timestamp, branch, actor, subject
        case eventID = "event_id"
        case extraMessage = "extra_msg"
        case requestTime = "request_time"
        case receivedAt = "received_at"
    }

    public init(from decoder: any Decoder) throws {
        let container = try decoder.container(keyedBy: CodingKeys.self)
        raw = try decoder.singleValueContainer().decode(JSONValue.self)
        eventID = try container.decode(String.self, forKey: .eventID)
        action = try container.decode(TutorCruncherAction.self, forKey: .action)
        verb = try container.decodeIfPresent(String.self, forKey: .verb)
        timestamp = try container.decodeIfPresent(Date.self, forKey: .timestamp)
        branch = try container.decodeIfPresent(Int.self, forKey: .branch)
        actor = try container.decodeIfPresent(Actor.self, forKey: .actor)
        extraMessage = try container.decodeIfPresent(String.self, forKey: .extraMessage)
        requestTime = try container.decodeIfPresent(Date.self, forKey: .requestTime)
        receivedAt = try container.decodeIfPresent(Date.self, forKey: .receivedAt)
        subject = try container.decodeIfPresent(Subject.self, forKey: .subject)
    }

    /// Decodes an envelope from the bytes of a message body.
    /// - Throws: ``TutorCruncherEventDecodingError`` when the bytes are not JSON or lack `event_id`/`action`.
    public init(envelope bytes: [UInt8]) throws {
        let value: JSONValue
        do {
            value = try JSONParser().parse(bytes)
        } catch {
            throw TutorCruncherEventDecodingError(reason: "body is not JSON: \(error)")
        }
        do {
            self = try JSONValueDecoder().decode(TutorCruncherEvent.self, from: value)
        } catch {
            throw TutorCruncherEventDecodingError(error, context: "not a TutorCruncher event envelope")
        }
    }
}

/// Why a message, or a subject, could not be decoded: a reason and the field it failed at.
public struct TutorCruncherEventDecodingError: Error, Sendable, CustomStringConvertible {
    public var reason: String
    /// Where decoding failed, as a path from the decoded value (`action`, `subject.amount`,
    /// `subject.skills[2].id`); empty for the whole value (e.g. not JSON).
    public var fieldPath: String

    public init(reason: String, fieldPath: String = "") {
        self.reason = reason
        self.fieldPath = fieldPath
    }

    /// From a `DecodingError` (its coding path and what was wrong there), under `prefix`.
    init(_ error: any Error, context: String, prefix: [String] = []) {
        let (path, detail) = Self.describe(error)
        let full = prefix + path
        self.init(reason: "\(context): \(detail)", fieldPath: Self.join(full))
    }

    public var description: String { fieldPath.isEmpty ? reason : "\(reason) (at \(fieldPath))" }

    static func describe(_ error: any Error) -> (path: [String], detail: String) {
        func names(_ path: [any CodingKey]) -> [String] { path.map { $0.intValue.map { "[\($0)]" } ?? $0.stringValue } }
        guard let error = error as? DecodingError else { return ([], "\(error)") }
        switch error {
        case .keyNotFound(let key, let context): return (names(context.codingPath + [key]), "missing")
        case .typeMismatch(let type, let context): return (names(context.codingPath), "expected \(type): \(context.debugDescription)")
        case .valueNotFound(let type, let context): return (names(context.codingPath), "expected \(type), found null")
        case .dataCorrupted(let context): return (names(context.codingPath), context.debugDescription)
        @unknown default: return ([], "\(error)")
        }
    }

    static func join(_ parts: [String]) -> String {
        parts.reduce(into: "") { path, part in
            if part.hasPrefix("[") || path.isEmpty { path += part } else { path += "." + part }
        }
    }
}
