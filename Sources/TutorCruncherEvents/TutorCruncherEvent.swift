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
            throw TutorCruncherEventDecodingError(reason: "not a TutorCruncher event envelope: \(error)")
        }
    }
}

/// Why a message could not be decoded as a ``TutorCruncherEvent``.
public struct TutorCruncherEventDecodingError: Error, Sendable, CustomStringConvertible {
    public var reason: String
    public var description: String { reason }
}
