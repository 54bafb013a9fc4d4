/// A TutorCruncher webhook action such as `CLIENT_PAID_INVOICE`.
///
/// An open set: every action in TutorCruncher's catalogue is a named constant
/// (``TutorCruncherAction/clientPaidInvoice``), and actions TutorCruncher adds later still decode,
/// as a value with no ``details``.
public struct TutorCruncherAction: RawRepresentable, Hashable, Sendable, Codable, ExpressibleByStringLiteral,
    CustomStringConvertible
{
    /// What the catalogue says about a known action.
    public struct Details: Sendable, Hashable {
        /// Human text, e.g. "Raised an Invoice".
        public var verb: String
        /// The kinds of subject the event can carry; empty for actions without a subject.
        public var subjectTypes: [SubjectType]
        /// The template TutorCruncher fills into `extra_msg`, empty when none.
        public var extraMessageTemplate: String
    }

    /// The action exactly as sent, e.g. `RAISED_INVOICE`; also the AMQP routing key.
    public let rawValue: String

    public init(rawValue: String) { self.rawValue = rawValue }
    public init(_ rawValue: String) { self.rawValue = rawValue }
    public init(stringLiteral value: String) { self.rawValue = value }

    public init(from decoder: any Decoder) throws {
        rawValue = try decoder.singleValueContainer().decode(String.self)
    }

    public func encode(to encoder: any Encoder) throws {
        var container = encoder.singleValueContainer()
        try container.encode(rawValue)
    }

    /// Catalogue details; `nil` for an action the catalogue does not know (yet).
    public var details: Details? { Self.catalogue[rawValue] }
    public var isKnown: Bool { details != nil }
    public var description: String { rawValue }
}

/// The kind of record an event's subject is (`subject.model`). Open, like ``TutorCruncherAction``.
public struct SubjectType: RawRepresentable, Hashable, Sendable, Codable, ExpressibleByStringLiteral, CustomStringConvertible {
    public let rawValue: String
    public init(rawValue: String) { self.rawValue = rawValue }
    public init(stringLiteral value: String) { self.rawValue = value }

    public init(from decoder: any Decoder) throws {
        rawValue = try decoder.singleValueContainer().decode(String.self)
    }

    public func encode(to encoder: any Encoder) throws {
        var container = encoder.singleValueContainer()
        try container.encode(rawValue)
    }

    public var description: String { rawValue }

    public static let tutor: SubjectType = "Tutor"
    public static let client: SubjectType = "Client"
    public static let student: SubjectType = "Student"
    public static let affiliate: SubjectType = "Affiliate"
    public static let job: SubjectType = "Job"
    public static let application: SubjectType = "Application"
    public static let lesson: SubjectType = "Lesson"
    public static let invoice: SubjectType = "Invoice"
    public static let creditRequest: SubjectType = "Credit Request"
    public static let paymentOrder: SubjectType = "Payment Order"
    public static let adHocCharge: SubjectType = "Ad Hoc Charge"
    public static let report: SubjectType = "Report"
    public static let note: SubjectType = "Note"
    public static let task: SubjectType = "Task"
    public static let package: SubjectType = "Package"
    public static let safeguardingConcern: SubjectType = "Safeguarding/Wellbeing Concern"

    /// The 16 subject types of the action catalogue.
    public static let allKnown: [SubjectType] = [
        .tutor, .client, .student, .affiliate, .job, .application, .lesson, .invoice, .creditRequest, .paymentOrder,
        .adHocCharge, .report, .note, .task, .package, .safeguardingConcern,
    ]
}
