#if canImport(FoundationEssentials)
import FoundationEssentials
#else
import Foundation
#endif

/// An invoice raised to a client. Money is exact (`Decimal` from TutorCruncher's decimal strings or numbers).
public struct Invoice: Sendable, Decodable {
    public let displayID: String?
    public let status: String?
    public let date: Date?
    public let dateSent: Date?
    public let datePaid: Date?
    public let dateVoided: Date?
    public let gross: Decimal?
    public let net: Decimal?
    public let tax: Decimal?
    public let stillToPay: Decimal?
    public let client: Reference?

    enum CodingKeys: String, CodingKey {
        case status, date, gross, net, tax, client
        case displayID = "display_id"
        case dateSent = "date_sent"
        case datePaid = "date_paid"
        case dateVoided = "date_void"
        case stillToPay = "still_to_pay"
    }
}

/// A credit request (TutorCruncher's "Proforma Invoice"): a request for a client to top up credit.
public struct CreditRequest: Sendable, Decodable {
    public let displayID: String?
    public let status: String?
    public let amount: Decimal?
    public let date: Date?
    public let dateSent: Date?
    public let datePaid: Date?
    public let stillToPay: Decimal?
    public let client: Reference?

    enum CodingKeys: String, CodingKey {
        case status, amount, date, client
        case displayID = "display_id"
        case dateSent = "date_sent"
        case datePaid = "date_paid"
        case stillToPay = "still_to_pay"
    }
}

/// A payment order: money owed to a tutor or affiliate.
public struct PaymentOrder: Sendable, Decodable {
    public let displayID: String?
    public let status: String?
    public let amount: Decimal?
    public let date: Date?
    public let dateSent: Date?
    public let datePaid: Date?
    public let dateVoided: Date?
    public let stillToPay: Decimal?
    public let payee: Reference?

    enum CodingKeys: String, CodingKey {
        case status, amount, date, payee
        case displayID = "display_id"
        case dateSent = "date_sent"
        case datePaid = "date_paid"
        case dateVoided = "date_void"
        case stillToPay = "still_to_pay"
    }
}

/// An ad hoc charge: a one-off charge to a client and/or payment to a tutor.
public struct AdHocCharge: Sendable, Decodable {
    public let description: String?
    public let dateOccurred: Date?
    public let category: JSONValueBox?
    /// What the client is charged (`client_cost`).
    public let clientCost: Decimal?
    public let payTutor: Decimal?
    public let client: Reference?
    public let tutor: Reference?
    public let job: Reference?

    enum CodingKeys: String, CodingKey {
        case description, category, client
        case dateOccurred = "date_occurred"
        case clientCost = "client_cost"
        case payTutor = "pay_contractor"
        case tutor = "contractor"
        case job = "service"
    }
}

/// A package of lessons sold to a client.
public struct Package: Sendable, Decodable {
    public let name: String?
    public let description: String?
    public let price: Decimal?
    public let units: Decimal?
    public let status: String?

    enum CodingKeys: String, CodingKey { case name, description, price, units, status }
}
