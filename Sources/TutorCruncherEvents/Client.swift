#if canImport(FoundationEssentials)
import FoundationEssentials
#else
import Foundation
#endif

/// A client (the paying party): contact details plus ``ClientFields``.
public typealias Client = Person<ClientFields>

public struct ClientFields: Sendable, Decodable {
    public let status: String?
    /// Tax is charged on this client's invoices.
    public let isTaxable: Bool?
    /// Automatic charging: TutorCruncher's `auto_charge` code (0, 10 or 20).
    public let autoCharge: Int?
    public let invoiceBalance: Decimal?
    public let availableBalance: Decimal?
    public let paymentPending: Decimal?
    public let associatedAdmin: Reference?
    public let associatedAgent: Reference?
    public let paidRecipients: [Reference]?
    public let calendarColour: String?
    public let labels: [Label]?
    public let extraAttributes: [ExtraAttribute]?
    public let lastUpdated: Date?
    public let receivedNotifications: [String]?

    enum CodingKeys: String, CodingKey {
        case status, labels
        case isTaxable = "is_taxable"
        case autoCharge = "auto_charge"
        case invoiceBalance = "invoice_balance"
        case availableBalance = "available_balance"
        case paymentPending = "payment_pending"
        case associatedAdmin = "associated_admin"
        case associatedAgent = "associated_agent"
        case paidRecipients = "paid_recipients"
        case calendarColour = "calendar_colour"
        case extraAttributes = "extra_attrs"
        case lastUpdated = "last_updated"
        case receivedNotifications = "received_notifications"
    }
}

/// A student (recipient of lessons): contact details plus ``StudentFields``.
public typealias Student = Person<StudentFields>

public struct StudentFields: Sendable, Decodable {
    public let dateOfBirth: String?
    public let school: String?
    public let academicYear: String?
    public let paidRecipient: Reference?
    /// The client who pays for this student (`paying_client`).
    public let client: Reference?
    public let calendarColour: String?
    public let labels: [Label]?
    public let extraAttributes: [ExtraAttribute]?
    public let lastUpdated: Date?

    enum CodingKeys: String, CodingKey {
        case school, labels
        case client = "paying_client"
        case dateOfBirth = "date_of_birth"
        case academicYear = "academic_year"
        case paidRecipient = "paid_recipient"
        case calendarColour = "calendar_colour"
        case extraAttributes = "extra_attrs"
        case lastUpdated = "last_updated"
    }
}

/// An affiliate (TutorCruncher's "Agent", who refers clients): contact details plus ``AffiliateFields``.
public typealias Affiliate = Person<AffiliateFields>

public struct AffiliateFields: Sendable, Decodable {
    public let commissionRate: Decimal?
    public let labels: [Label]?
    public let extraAttributes: [ExtraAttribute]?
    public let lastUpdated: Date?

    enum CodingKeys: String, CodingKey {
        case labels
        case commissionRate = "commission_rate"
        case extraAttributes = "extra_attrs"
        case lastUpdated = "last_updated"
    }
}
