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
    public let tutors: [Reference]?
    public let students: [Reference]?

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
    public let chargeRate: Decimal?
    public let job: Reference?
    public let location: JSONValueBox?
    public let tutors: [Reference]?
    public let students: [Reference]?

    enum CodingKeys: String, CodingKey {
        case start, finish, topic, status, units, location
        case chargeType = "charge_type"
        case chargeRate = "charge_rate"
        case job = "service"
        case tutors = "cjas"
        case students = "rcras"
    }
}

/// A lesson report written by a tutor.
public struct Report: Sendable, Decodable {
    public let status: String?
    public let job: Reference?
    public let lesson: Reference?
    public let tutor: Reference?
    public let client: Reference?
    public let student: Reference?
    public let dateCreated: Date?
    public let extraAttributes: [ExtraAttribute]?

    enum CodingKeys: String, CodingKey {
        case status, client
        case job = "service"
        case lesson = "appointment"
        case tutor = "contractor"
        case student = "recipient"
        case dateCreated = "dt_created"
        case extraAttributes = "extra_attrs"
    }
}
