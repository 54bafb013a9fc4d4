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
    public let name: String?
    public let description: String?
    public let status: String?
    public let dueDate: Date?
    public let assignee: Reference?

    enum CodingKeys: String, CodingKey {
        case name, description, status, assignee
        case dueDate = "due_date"
    }
}

/// A safeguarding or wellbeing concern raised about a student.
public struct SafeguardingConcern: Sendable, Decodable {
    public let status: String?
    public let description: String?
    public let dateCreated: Date?
    public let student: Reference?
    public let raisedBy: Reference?

    enum CodingKeys: String, CodingKey {
        case status, description, student
        case dateCreated = "dt_created"
        case raisedBy = "raised_by"
    }
}
