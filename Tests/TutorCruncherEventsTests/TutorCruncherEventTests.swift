import Foundation
import Testing
import TutorCruncher
import TutorCruncherEvents

@Suite struct TutorCruncherEventTests {
    @Test func example2021NestedUserFloatsAndUnderscoreRequestTime() throws {
        let event = try Envelopes.fixture("changed-contractor-status.2021.json")
        #expect(event.action == .changedContractorStatus)
        #expect(event.verb == "Changed a Tutor's status")
        #expect(event.branch == nil)
        #expect(event.actor?.name == "Billy Holiday")
        #expect(event.actor?.id == 59)
        #expect(event.actor?.userID == 58)
        #expect(event.actor?.url == "")
        #expect(event.extraMessage == nil)
        #expect(event.requestTime == Date(timeIntervalSince1970: 1_583_844_113))
        let subject = try #require(event.subject)
        #expect(subject.model == .tutor)
        #expect(subject.id == 54)
        #expect(subject.url == "http://localhost:8000/api/contractors/54/")
        let tutor = try #require(subject.tutor)
        #expect(tutor.firstName == "Walter")
        #expect(tutor.contact.lastName == "Moore")
        #expect(tutor.email == "walter_moore@testagency.example.com")
        #expect(tutor.latitude == Decimal(string: "51.4796469999999999"))
        #expect(tutor.status == "approved")
        #expect(tutor.receiveServiceNotifications == true)
        #expect(tutor.skills?.map(\.subject) == ["History", "Portuguese"])
        #expect(tutor.extraAttributes?.first?.machineName == "contractor-exp")
        #expect(tutor.workDoneDetails?.amountOwed == Decimal(string: "97.5"))
        #expect(tutor.workDoneDetails?.amountPaid == Decimal(string: "1854.9"))
        #expect(tutor.workDoneDetails?.totalPaidHours == .seconds(2 * 86_400 + 9 * 3600))
        #expect(tutor.reviewDuration == .zero)
        #expect(subject.invoice == nil, "a Tutor subject has no invoice view")
    }

    @Test func example2023WithBranchAndIntegerMoney() throws {
        let event = try Envelopes.fixture("changed-contractor-status.2023.json")
        #expect(event.branch == 17597)
        let tutor = try #require(event.subject?.tutor)
        #expect(tutor.firstName == "Bettie")
        #expect(tutor.workDoneDetails?.amountPaid == 2230)
        #expect(tutor.workDoneDetails?.amountOwed == Decimal(string: "804.4"))
        #expect(tutor.workDoneDetails?.totalPaidHours == .seconds(2 * 86_400 + 2 * 3600 + 30 * 60))
        #expect(tutor.receivedNotifications?.count == 4)
    }

    @Test func example2025FlatContactsExtraMessageAndNoRequestTime() throws {
        let event = try Envelopes.fixture("created-a-contractor.2025.json")
        #expect(event.action == .createdAContractor)
        #expect(event.actor?.name == "last_namé_6")
        #expect(event.extraMessage == "Created via the API.")
        #expect(event.requestTime == nil)
        #expect(event.receivedAt == Envelopes.receivedAt.date)
        let tutor = try #require(event.subject?.tutor)
        #expect(tutor.firstName == nil)
        #expect(tutor.lastName == "Gallagher")
        #expect(tutor.contact.fullName == "Gallagher")
        #expect(tutor.email == "liamgallagher@oasis.co.uk")
        #expect(tutor.latitude == nil)
        #expect(tutor.photo == "https://app.tutorcruncher.com/media/photo/65.jpg")
        #expect(tutor.dateCreated == UTCTimestamp(iso8601: "2025-03-05T15:26:20.518149Z")?.date)
    }

    @Test func timestampKeepsMicroseconds() throws {
        let event = try Envelopes.fixture("created-a-contractor.2025.json")
        let timestamp = try #require(event.timestamp)
        let micros = (timestamp.timeIntervalSince1970 * 1_000_000).rounded()
        #expect(Int64(micros) == 1_741_188_380_558_919)
    }

    @Test func eventIDAndRawEnvelopeAreKept() throws {
        let body = try Envelopes.events(fromBody: Array(#"{"events": [{"action": "A", "custom": {"deep": [1, 2.50]}}]}"#.utf8))
        let event = try #require(body.first)
        #expect(event.eventID.hasSuffix("-0"))
        #expect(event.raw["custom"]?["deep"] == .array([.number("1"), .number("2.50")]))
    }

    @Test func batchesDecodeEveryEvent() throws {
        let events = try Envelopes.events(fromBody: Array(#"""
            {"request_time": 5, "events": [
              {"action": "RAISED_INVOICE", "subject": {"model": "Invoice", "id": 1, "gross": "55.90000", "net": 46.58, "tax": "9.32"}},
              {"action": "CLIENT_PAID_INVOICE", "subject": {"model": "Invoice", "id": 1, "still_to_pay": 0}},
              {"action": "LOGIN"}
            ]}
            """#.utf8))
        #expect(events.map(\.action) == [.raisedInvoice, .clientPaidInvoice, .login])
        #expect(events.map { String($0.eventID.suffix(2)) } == ["-0", "-1", "-2"])
        let invoice = try #require(events[0].subject?.invoice)
        #expect(invoice.gross == Decimal(string: "55.9"))
        #expect(invoice.net == Decimal(string: "46.58"))
        #expect(events[1].subject?.invoice?.stillToPay == 0)
        #expect(events[2].subject == nil)
        #expect(events[2].requestTime == Date(timeIntervalSince1970: 5))
    }

    @Test func moneyIsExactNeverThroughDouble() throws {
        // 0.1 + 0.2 style values and long decimals survive exactly.
        let event = try Envelopes.event(#"{"action": "RAISED_INVOICE", "subject": {"model": "Invoice", "gross": 1234567890.123456789, "net": "0.10000", "tax": 0.2}}"#)
        let invoice = try #require(event.subject?.invoice)
        #expect(invoice.gross == Decimal(string: "1234567890.123456789"))
        #expect(invoice.net! + invoice.tax! == Decimal(string: "0.3"))
    }

    @Test func nullsEverywhereStillDecode() throws {
        let event = try Envelopes.event(#"""
            {"action": "CREATED_A_CLIENT", "verb": null, "timestamp": null, "branch": null, "actor": null, "extra_msg": null,
             "subject": {"model": "Client", "id": null, "url": null, "user": null, "first_name": null, "invoice_balance": null,
                         "labels": null, "extra_attrs": [{"id": null, "value": "False", "type": null, "machine_name": null, "name": null}]}}
            """#)
        #expect(event.verb == nil)
        #expect(event.timestamp == nil)
        #expect(event.actor == nil)
        let client = try #require(event.subject?.client)
        #expect(client.firstName == nil)
        #expect(client.invoiceBalance == nil)
        #expect(client.extraAttributes?.first?.value == "False")
    }

    @Test func subjectTheViewCannotReadStillYieldsTheEvent() throws {
        // The view tolerates wrong shapes field by field; the raw subject is always there.
        let event = try Envelopes.event(#"{"action": "CHANGED_CONTRACTOR_STATUS", "subject": {"model": "Tutor", "id": "not-a-number", "status": 7, "skills": "oops", "work_done_details": [1]}}"#)
        let subject = try #require(event.subject)
        #expect(subject.id == nil)
        #expect(subject.raw["id"] == .string("not-a-number"))
        let tutor = try #require(subject.tutor)
        #expect(tutor.status == nil)
        #expect(tutor.skills == nil)
        #expect(tutor.workDoneDetails == nil)
    }

    @Test func subjectThatIsNotAnObjectIsNil() throws {
        let event = try Envelopes.event(#"{"action": "LOGIN", "subject": "weird"}"#)
        #expect(event.subject == nil)
        #expect(event.raw["subject"] == .string("weird"))
    }

    @Test func unknownActionsAndModelsDecode() throws {
        let event = try Envelopes.event(#"{"action": "INVENTED_IN_2030", "subject": {"model": "Hologram", "id": 3}}"#)
        #expect(event.action.rawValue == "INVENTED_IN_2030")
        #expect(event.action.details == nil)
        #expect(event.subject?.model == SubjectType(rawValue: "Hologram"))
        #expect(event.subject?.tutor == nil)
        #expect(event.subject?.id == 3)
    }

    @Test func customTypesCanBeDecodedFromTheSubject() throws {
        struct MyInvoice: Decodable { let gross: Decimal; let display_id: String }
        let event = try Envelopes.event(#"{"action": "RAISED_INVOICE", "subject": {"model": "Invoice", "gross": "10.50", "display_id": "INV-1"}}"#)
        let mine = try #require(event.subject?.decode(as: MyInvoice.self))
        #expect(mine.gross == Decimal(string: "10.5"))
        #expect(mine.display_id == "INV-1")
    }

    @Test func everySubjectTypeHasAView() throws {
        let samples: [(String, (Subject) -> Bool)] = [
            ("Tutor", { $0.tutor != nil }), ("Client", { $0.client != nil }), ("Student", { $0.student != nil }),
            ("Affiliate", { $0.affiliate != nil }), ("Job", { $0.job != nil }), ("Application", { $0.application != nil }),
            ("Lesson", { $0.lesson != nil }), ("Invoice", { $0.invoice != nil }), ("Credit Request", { $0.creditRequest != nil }),
            ("Payment Order", { $0.paymentOrder != nil }), ("Ad Hoc Charge", { $0.adHocCharge != nil }), ("Report", { $0.report != nil }),
            ("Note", { $0.note != nil }), ("Task", { $0.task != nil }), ("Package", { $0.package != nil }),
            ("Safeguarding/Wellbeing Concern", { $0.safeguardingConcern != nil }),
        ]
        #expect(samples.map(\.0) == SubjectType.allKnown.map(\.rawValue))
        for (model, hasView) in samples {
            let event = try Envelopes.event(#"{"action": "X", "subject": {"model": "\#(model)", "id": 1}}"#)
            #expect(hasView(try #require(event.subject)), "\(model)")
        }
    }

    @Test func envelopesWithoutIdentityAreUndecodable() {
        #expect(throws: TutorCruncherEventDecodingError.self) { try TutorCruncherEvent(envelope: Array("nope".utf8)) }
        #expect(throws: TutorCruncherEventDecodingError.self) { try TutorCruncherEvent(envelope: Array(#"{"action": "A"}"#.utf8)) }
        #expect(throws: TutorCruncherEventDecodingError.self) { try TutorCruncherEvent(envelope: Array(#"{"event_id": "x"}"#.utf8)) }
        #expect(throws: TutorCruncherEventDecodingError.self) { try TutorCruncherEvent(envelope: Array(#"[1]"#.utf8)) }
    }
}

@Suite struct NumberOverflowTests {
    struct Holder: Decodable {
        var length: Duration?
        var count: Int64?
    }

    @Test(arguments: ["1e300", "-1e300", "1e999999"])
    func hugeNumbersAreDecodingErrorsNotTraps(literal: String) throws {
        let value = try JSONParser().parse(Array(#"{"length": \#(literal)}"#.utf8))
        #expect(throws: DecodingError.self) { try JSONValueDecoder().decode(Duration.self, from: value["length"] ?? .null) }
        #expect(throws: DecodingError.self) { try JSONValueDecoder().decode(Int64.self, from: value["length"] ?? .null) }
        // An optional field that cannot be read becomes nil; the event still decodes.
        let holder = try JSONValueDecoder().decode(Holder.self, from: try JSONParser().parse(Array(#"{"length": \#(literal), "count": \#(literal)}"#.utf8)))
        #expect(holder.length == nil && holder.count == nil)
    }
}

@Suite struct DurationParsingTests {
    @Test func tutorCruncherDurations() {
        #expect(Duration(tutorCruncher: "2 09:00:00") == .seconds(2 * 86_400 + 9 * 3600))
        #expect(Duration(tutorCruncher: "00:45:00") == .seconds(45 * 60))
        #expect(Duration(tutorCruncher: "00:00:01.5") == .milliseconds(1500))
        #expect(Duration(tutorCruncher: "-1 23:00:00") == .zero - .seconds(86_400 + 23 * 3600))
        #expect(Duration(tutorCruncher: "100:00:00") == .seconds(100 * 3600))
    }

    @Test(arguments: [
        "", "9", "1:2", "00:60:00", "00:00:61", "x 00:00:00", "00:00:00.", "1 2 00:00:00",
        // Overflow and signs inside the parts are not durations (they used to trap or mislead).
        "9999999999999999 00:00:00", "99999999999999999999 00:00:00", "00:-5:00", "+1 00:00:00", "00:00:00.-5",
    ])
    func malformedDurations(text: String) {
        #expect(Duration(tutorCruncher: text) == nil)
    }
}

/// Decoding failures say what was wrong and where.
@Suite struct DecodingErrorTests {
    @Test func anEnvelopeWithoutAnActionNamesTheField() throws {
        let body = Array(#"{"event_id": "abc-0", "verb": "Did"}"#.utf8)
        do {
            _ = try TutorCruncherEvent(envelope: body)
            Issue.record("decoded an envelope without an action")
        } catch let error as TutorCruncherEventDecodingError {
            #expect(error.fieldPath == "action", "\(error)")
            #expect(error.description.contains("missing"))
        }
    }

    @Test func aSubjectThatDoesNotFitSaysWhichField() throws {
        struct Order: Decodable {
            struct Line: Decodable { let amount: Decimal }
            let lines: [Line]
        }
        let event = try Envelopes.event(#"{"action": "RAISED_INVOICE", "subject": {"model": "Invoice", "id": 3, "lines": [{"amount": "1.00"}, {"amount": "lots"}]}}"#)
        let subject = try #require(event.subject)
        #expect(subject.decode(as: Order.self) == nil)
        do {
            _ = try subject.decoded(as: Order.self)
            Issue.record("decoded a subject that does not fit")
        } catch {
            #expect(error.fieldPath == "subject.lines[1].amount", "\(error)")
        }
    }
}
