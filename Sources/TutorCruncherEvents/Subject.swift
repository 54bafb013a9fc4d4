#if canImport(FoundationEssentials)
import FoundationEssentials
#else
import Foundation
#endif
import TutorCruncher

/// The record an event is about: its `model`, `id`, `url`, typed views, and always its raw JSON.
///
/// Each typed view (``tutor``, ``invoice``…) is non-`nil` when `model` names that type and the
/// subject could be read; a subject a view cannot read still leaves the event and ``raw`` intact.
public struct Subject: Sendable, Decodable {
    public let model: SubjectType?
    /// The record's id (an integer in every payload seen so far).
    public let id: Int?
    /// The record's API URL.
    public let url: String?
    /// The subject object exactly as received.
    public let raw: JSONValue

    enum CodingKeys: String, CodingKey { case model, id, url }

    public init(from decoder: any Decoder) throws {
        let container = try decoder.container(keyedBy: CodingKeys.self)
        raw = try decoder.singleValueContainer().decode(JSONValue.self)
        model = try container.decodeIfPresent(SubjectType.self, forKey: .model)
        id = try container.decodeIfPresent(Int.self, forKey: .id)
        url = try container.decodeIfPresent(String.self, forKey: .url)
    }

    /// Decodes the subject as `type` (any `Decodable`, including your own), or `nil` when it does
    /// not fit (``decoded(as:)`` says why).
    public func decode<T: Decodable>(as type: T.Type) -> T? {
        try? JSONValueDecoder().decode(type, from: raw)
    }

    /// Decodes the subject as `type`, or throws why not, with the field path (`subject.amount`).
    public func decoded<T: Decodable>(as type: T.Type) throws(TutorCruncherEventDecodingError) -> T {
        do {
            return try JSONValueDecoder().decode(type, from: raw)
        } catch {
            throw TutorCruncherEventDecodingError(error, context: "subject is not a \(T.self)", prefix: ["subject"])
        }
    }

    private func view<T: Decodable>(_ type: T.Type, for models: SubjectType...) -> T? {
        guard let model, models.contains(model) else { return nil }
        return decode(as: type)
    }

    public var tutor: Tutor? { view(Tutor.self, for: .tutor, "Contractor") }
    public var client: Client? { view(Client.self, for: .client) }
    public var student: Student? { view(Student.self, for: .student) }
    public var affiliate: Affiliate? { view(Affiliate.self, for: .affiliate, "Agent") }
    public var job: Job? { view(Job.self, for: .job, "Service") }
    public var application: Application? { view(Application.self, for: .application) }
    public var lesson: Lesson? { view(Lesson.self, for: .lesson, "Appointment") }
    public var invoice: Invoice? { view(Invoice.self, for: .invoice) }
    public var creditRequest: CreditRequest? { view(CreditRequest.self, for: .creditRequest, "ProformaInvoice") }
    public var paymentOrder: PaymentOrder? { view(PaymentOrder.self, for: .paymentOrder) }
    public var adHocCharge: AdHocCharge? { view(AdHocCharge.self, for: .adHocCharge) }
    public var report: Report? { view(Report.self, for: .report) }
    public var note: Note? { view(Note.self, for: .note) }
    public var task: TutorCruncherTask? { view(TutorCruncherTask.self, for: .task) }
    public var package: Package? { view(Package.self, for: .package) }
    public var safeguardingConcern: SafeguardingConcern? { view(SafeguardingConcern.self, for: .safeguardingConcern) }
}

/// A link to another record: `id`, optional `url` and display name.
public struct Reference: Sendable, Decodable, Hashable {
    public let id: Int?
    public let url: String?
    public let name: String?
    public let firstName: String?
    public let lastName: String?

    enum CodingKeys: String, CodingKey {
        case id, url, name
        case firstName = "first_name"
        case lastName = "last_name"
    }
}

/// A custom field value. TutorCruncher sends every `value` as a string (`"False"`, `"12"`).
public struct ExtraAttribute: Sendable, Decodable, Hashable {
    public let id: Int?
    public let value: String?
    public let type: String?
    public let machineName: String?
    public let name: String?

    enum CodingKeys: String, CodingKey {
        case id, value, type, name
        case machineName = "machine_name"
    }
}

/// A label attached to a record.
public struct Label: Sendable, Decodable, Hashable {
    public let id: Int?
    public let name: String?
    public let machineName: String?

    enum CodingKeys: String, CodingKey {
        case id, name
        case machineName = "machine_name"
    }
}
