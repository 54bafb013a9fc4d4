#if canImport(FoundationEssentials)
import FoundationEssentials
#else
import Foundation
#endif
import TutorCruncher

/// A person's contact details. Older payloads nest them under `subject.user`; since 2025 they are
/// flat on the subject. ``init(from:)`` reads either.
public struct Contact: Sendable, Decodable, Hashable {
    public let title: String?
    public let firstName: String?
    public let lastName: String?
    public let email: String?
    public let mobile: String?
    public let phone: String?
    public let street: String?
    public let state: String?
    public let town: String?
    public let country: String?
    public let postcode: String?
    /// Sent as long decimal strings (`"51.4796469999999999"`) or null: kept exact.
    public let latitude: Decimal?
    public let longitude: Decimal?
    public let dateCreated: Date?
    public let timezone: String?

    enum CodingKeys: String, CodingKey {
        case title, email, mobile, phone, street, state, town, country, postcode, latitude, longitude, timezone
        case firstName = "first_name"
        case lastName = "last_name"
        case dateCreated = "date_created"
        case user
    }

    /// Reads `user` when the subject has one, else the subject's own (flat) fields.
    public init(from decoder: any Decoder) throws {
        let outer = try decoder.container(keyedBy: CodingKeys.self)
        let container = (try? outer.nestedContainer(keyedBy: CodingKeys.self, forKey: .user)) ?? outer
        title = try container.decodeIfPresent(String.self, forKey: .title)
        firstName = try container.decodeIfPresent(String.self, forKey: .firstName)
        lastName = try container.decodeIfPresent(String.self, forKey: .lastName)
        email = try container.decodeIfPresent(String.self, forKey: .email)
        mobile = try container.decodeIfPresent(String.self, forKey: .mobile)
        phone = try container.decodeIfPresent(String.self, forKey: .phone)
        street = try container.decodeIfPresent(String.self, forKey: .street)
        state = try container.decodeIfPresent(String.self, forKey: .state)
        town = try container.decodeIfPresent(String.self, forKey: .town)
        country = try container.decodeIfPresent(String.self, forKey: .country)
        postcode = try container.decodeIfPresent(String.self, forKey: .postcode)
        latitude = try container.decodeIfPresent(Decimal.self, forKey: .latitude)
        longitude = try container.decodeIfPresent(Decimal.self, forKey: .longitude)
        dateCreated = try container.decodeIfPresent(Date.self, forKey: .dateCreated)
        timezone = try container.decodeIfPresent(String.self, forKey: .timezone)
    }

    /// "First Last", skipping missing parts; `nil` when both are missing.
    public var fullName: String? {
        let parts = [firstName, lastName].compactMap { $0 }.filter { !$0.isEmpty }
        return parts.isEmpty ? nil : parts.joined(separator: " ")
    }
}

/// A subject type that is a person: its ``contact`` details and its own fields, both reachable
/// directly (`tutor.email`, `tutor.status`) through dynamic member lookup.
@dynamicMemberLookup
public struct Person<Fields: Decodable & Sendable>: Sendable, Decodable {
    public let contact: Contact
    public let fields: Fields

    public init(from decoder: any Decoder) throws {
        contact = try Contact(from: decoder)
        fields = try Fields(from: decoder)
    }

    public subscript<T>(dynamicMember keyPath: KeyPath<Fields, T>) -> T { fields[keyPath: keyPath] }
    public subscript<T>(dynamicMember keyPath: KeyPath<Contact, T>) -> T { contact[keyPath: keyPath] }
}
