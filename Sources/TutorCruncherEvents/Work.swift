#if canImport(FoundationEssentials)
import FoundationEssentials
#else
import Foundation
#endif

/// A job (TutorCruncher's "Service"): the tutoring arrangement lessons belong to.
public struct Job: Sendable, Decodable {
    public let name: String?
    public let status: String?
    public let description: String?
    public let chargeType: String?
    public let chargeRate: Decimal?
    public let tutorRate: Decimal?
    public let colour: String?
    public let dateCreated: Date?
    public let labels: [Label]?
    public let extraAttributes: [ExtraAttribute]?
    /// The job's tutors (`conjobs`), each with their pay rate.
    public let tutors: [AssignedTutor]?
    /// The job's students (`rcrs`), each with the client who pays.
    public let students: [AssignedStudent]?

    enum CodingKeys: String, CodingKey {
        case name, status, description, colour, labels
        case chargeType = "dft_charge_type"
        case chargeRate = "dft_charge_rate"
        case tutorRate = "dft_contractor_rate"
        case dateCreated = "created"
        case extraAttributes = "extra_attrs"
        case tutors = "conjobs"
        case students = "rcrs"
    }
}

/// A tutor's application for a job.
public struct Application: Sendable, Decodable {
    public let status: String?
    public let description: String?
    public let job: Reference?
    public let tutor: Reference?
    public let dateCreated: Date?

    enum CodingKeys: String, CodingKey {
        case status, description
        case job = "service"
        case tutor = "contractor"
        case dateCreated = "created"
    }
}

/// A lesson (TutorCruncher's "Appointment").
public struct Lesson: Sendable, Decodable {
    public let start: Date?
    public let finish: Date?
    public let topic: String?
    public let status: String?
    public let units: Decimal?
    public let chargeType: String?
    public let job: Reference?
    public let location: JSONValueBox?
    /// The lesson's tutors (`cjas`), each with their pay rate.
    public let tutors: [AssignedTutor]?
    /// The lesson's students (`rcras`), each with their own charge rate and attendance status.
    public let students: [AssignedStudent]?

    enum CodingKeys: String, CodingKey {
        case start, finish, topic, status, units, location
        case chargeType = "charge_type"
        case job = "service"
        case tutors = "cjas"
        case students = "rcras"
    }
}

/// A lesson report written by a tutor.
public struct Report: Sendable, Decodable {
    /// Approved by an administrator.
    public let approved: Bool?
    public let lesson: Reference?
    /// Who wrote it (usually the lesson's tutor).
    public let creator: Reference?
    public let client: Reference?
    public let student: Reference?
    public let dateCreated: Date?
    public let extraAttributes: [ExtraAttribute]?

    enum CodingKeys: String, CodingKey {
        case approved, client, creator
        case lesson = "appointment"
        case student = "service_recipient"
        case dateCreated = "dt_created"
        case extraAttributes = "extra_attrs"
    }
}

/// A tutor on a job or lesson: `{"contractor": id, "name" or "contractor_name", "pay_rate"}`.
public struct AssignedTutor: Sendable, Decodable, Hashable {
    public let tutorID: Int?
    public let name: String?
    public let payRate: Decimal?

    enum CodingKeys: String, CodingKey {
        case name
        case tutorID = "contractor"
        case contractorName = "contractor_name"
        case payRate = "pay_rate"
    }

    public init(from decoder: any Decoder) throws {
        let container = try decoder.container(keyedBy: CodingKeys.self)
        tutorID = try container.decodeIfPresent(Int.self, forKey: .tutorID)
        name = try container.decodeIfPresent(String.self, forKey: .name) ?? container.decodeIfPresent(String.self, forKey: .contractorName)
        payRate = try container.decodeIfPresent(Decimal.self, forKey: .payRate)
    }
}

/// A student on a job or lesson: `{"recipient": id, "recipient_name", "paying_client", ...}`.
public struct AssignedStudent: Sendable, Decodable, Hashable {
    public let studentID: Int?
    public let name: String?
    public let payingClient: Reference?
    /// On a lesson: this student's charge rate and attendance status.
    public let chargeRate: Decimal?
    public let status: String?

    enum CodingKeys: String, CodingKey {
        case status
        case studentID = "recipient"
        case name = "recipient_name"
        case payingClient = "paying_client"
        case chargeRate = "charge_rate"
    }
}
