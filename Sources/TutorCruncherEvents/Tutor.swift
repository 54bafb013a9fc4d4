#if canImport(FoundationEssentials)
import FoundationEssentials
#else
import Foundation
#endif

/// A tutor (TutorCruncher's "Contractor"): contact details plus ``TutorFields``.
public typealias Tutor = Person<TutorFields>

public struct TutorFields: Sendable, Decodable {
    public let status: String?
    public let chargeViaBranch: Bool?
    public let defaultRate: Decimal?
    public let qualifications: [Qualification]?
    public let skills: [Skill]?
    public let institutions: [JSONValueBox]?
    public let receivedNotifications: [String]?
    /// Older payloads: a single flag instead of `received_notifications`.
    public let receiveServiceNotifications: Bool?
    public let reviewRating: Decimal?
    public let reviewDuration: Duration?
    public let lastUpdated: Date?
    public let calendarColour: String?
    public let labels: [Label]?
    public let extraAttributes: [ExtraAttribute]?
    public let workDoneDetails: WorkDoneDetails?
    public let photo: String?

    public struct Skill: Sendable, Decodable, Hashable {
        public let id: Int?
        public let subject: String?
        public let qualificationLevel: String?

        enum CodingKeys: String, CodingKey {
            case id, subject
            case qualificationLevel = "qual_level"
        }
    }

    public struct Qualification: Sendable, Decodable, Hashable {
        public let institution: String?
        public let subject: String?
        public let qualificationLevel: String?
        public let grade: String?
        public let year: Int?

        enum CodingKeys: String, CodingKey {
            case institution, subject, grade, year
            case qualificationLevel = "qual_level"
        }
    }

    /// Money owed and paid to the tutor, and hours worked.
    public struct WorkDoneDetails: Sendable, Decodable, Hashable {
        public let amountOwed: Decimal?
        public let amountPaid: Decimal?
        public let totalPaidHours: Duration?

        enum CodingKeys: String, CodingKey {
            case amountOwed = "amount_owed"
            case amountPaid = "amount_paid"
            case totalPaidHours = "total_paid_hours"
        }
    }

    enum CodingKeys: String, CodingKey {
        case status, qualifications, skills, institutions, labels, photo
        case chargeViaBranch = "charge_via_branch"
        case defaultRate = "default_rate"
        case receivedNotifications = "received_notifications"
        case receiveServiceNotifications = "receive_service_notifications"
        case reviewRating = "review_rating"
        case reviewDuration = "review_duration"
        case lastUpdated = "last_updated"
        case calendarColour = "calendar_colour"
        case extraAttributes = "extra_attrs"
        case workDoneDetails = "work_done_details"
    }
}

/// Any JSON value inside a typed view, for fields whose shape TutorCruncher does not document.
public struct JSONValueBox: Sendable, Decodable, Hashable {
    public let value: JSONValue
    public init(from decoder: any Decoder) throws { value = try decoder.singleValueContainer().decode(JSONValue.self) }
}

import TutorCruncher
