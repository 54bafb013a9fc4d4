import Foundation
import TestSupport
import Testing
import TutorCruncher

/// The generated constants must match TutorCruncher's catalogue exactly (regenerate with scripts/generate-actions.py).
@Suite struct ActionCatalogueTests {
    struct Entry: Decodable {
        let action: String
        let verb: String
        let subject_types: [String]
        let extra_msg: String
    }

    func catalogue() throws -> [Entry] {
        try JSONDecoder().decode([Entry].self, from: Data(Repository.fixture("actions.json")))
    }

    @Test func constantsMatchActionsJSONExactly() throws {
        let entries = try catalogue()
        #expect(entries.count == 227)
        #expect(TutorCruncherAction.allKnown.map(\.rawValue) == entries.map(\.action))
        for entry in entries {
            let details = try #require(TutorCruncherAction(rawValue: entry.action).details, "\(entry.action)")
            #expect(details.verb == entry.verb, "\(entry.action)")
            #expect(details.subjectTypes.map(\.rawValue) == entry.subject_types, "\(entry.action)")
            #expect(details.extraMessageTemplate == entry.extra_msg, "\(entry.action)")
        }
    }

    @Test func subjectTypesAreTheCatalogues16() throws {
        let used = Set(try catalogue().flatMap(\.subject_types))
        #expect(Set(SubjectType.allKnown.map(\.rawValue)) == used)
        #expect(SubjectType.allKnown.count == 16)
    }

    @Test func namedConstants() {
        #expect(TutorCruncherAction.raisedInvoice.rawValue == "RAISED_INVOICE")
        #expect(TutorCruncherAction.clientPaidInvoice.rawValue == "CLIENT_PAID_INVOICE")
        #expect(TutorCruncherAction.raisedInvoice.details?.subjectTypes == [.invoice])
        #expect(TutorCruncherAction.login.details?.subjectTypes == [])
    }

    @Test func unknownActionsAreValuesNotErrors() throws {
        let future = try JSONDecoder().decode(TutorCruncherAction.self, from: Data(#""NEW_IN_2030""#.utf8))
        #expect(future.rawValue == "NEW_IN_2030")
        #expect(!future.isKnown)
        let literal: TutorCruncherAction = "RAISED_INVOICE"
        #expect(literal == .raisedInvoice && literal.isKnown)
    }
}
