#if canImport(FoundationEssentials)
import FoundationEssentials
#else
import Foundation
#endif

/// A note attached to a record.
public struct Note: Sendable, Decodable {
    public let text: String?
    public let dateCreated: Date?
    public let creator: Reference?
    public let focus: Reference?

    enum CodingKeys: String, CodingKey {
        case text, creator, focus
        case dateCreated = "dt_created"
    }
}

/// A to-do task for administrators. (Named to avoid clashing with Swift's `Task`.)
public struct TutorCruncherTask: Sendable, Decodable {
    public let taskType: String?
    public let description: String?
    public let complete: Bool?
    public let dueDate: Date?
    /// The administrator it is assigned to.
    public let admin: Reference?

    enum CodingKeys: String, CodingKey {
        case description, complete, admin
        case taskType = "task_type"
        case dueDate = "due_dt"
    }
}

/// A safeguarding or wellbeing concern raised about a student.
public struct SafeguardingConcern: Sendable, Decodable {
    public let status: String?
    public let description: String?
    public let dateRaised: Date?
    public let student: Reference?
    /// Who raised it.
    public let creator: Reference?

    enum CodingKeys: String, CodingKey {
        case status, description, creator
        case dateRaised = "dt_raised"
        case student = "service_recipient"
    }
}
