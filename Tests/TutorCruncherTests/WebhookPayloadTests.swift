import Testing
import TutorCruncher

@Suite struct WebhookPayloadTests {
    func batch(_ text: String) throws -> EventBatch {
        guard case .events(let batch) = WebhookPayload.parse(Array(text.utf8)) else {
            Issue.record("not an event batch: \(text)")
            throw CancellationError()
        }
        return batch
    }

    func reason(_ text: String) -> String? {
        if case .unrecognised(let reason) = WebhookPayload.parse(Array(text.utf8)) { return reason }
        return nil
    }

    @Test func example2021WithUnderscoreRequestTimeAndNestedUser() throws {
        guard case .events(let batch) = WebhookPayload.parse(try Fixture.bytes("changed-contractor-status.2021.json")) else {
            Issue.record("not events")
            return
        }
        #expect(batch.requestTime == .number("1583844113"))
        #expect(batch.events.count == 1)
        let event = batch.events[0]
        #expect(event["action"] == .string("CHANGED_CONTRACTOR_STATUS"))
        #expect(event["branch"] == nil)
        #expect(event["subject"]?["user"]?["first_name"] == .string("Walter"))
        #expect(event["subject"]?["work_done_details"]?["amount_owed"] == .number("97.5"))
    }

    @Test func example2023WithBranch() throws {
        guard case .events(let batch) = WebhookPayload.parse(try Fixture.bytes("changed-contractor-status.2023.json")) else {
            Issue.record("not events")
            return
        }
        #expect(batch.requestTime == .number("1682070189"))
        #expect(batch.events[0]["branch"] == .number("17597"))
        #expect(batch.events[0]["subject"]?["id"] == .number("1865751"))
    }

    @Test func example2025WithFlatContactsAndNoRequestTime() throws {
        guard case .events(let batch) = WebhookPayload.parse(try Fixture.bytes("created-a-contractor.2025.json")) else {
            Issue.record("not events")
            return
        }
        #expect(batch.requestTime == .null)
        #expect(batch.events[0]["actor"]?["name"] == .string("last_namé_6"))
        #expect(batch.events[0]["extra_msg"] == .string("Created via the API."))
        #expect(batch.events[0]["subject"]?["email"] == .string("liamgallagher@oasis.co.uk"))
    }

    @Test func batchesKeepEventOrder() throws {
        let parsed = try batch(#"{"request_time": 5, "events": [{"action": "A"}, {"action": "B"}, {"action": "C"}]}"#)
        #expect(parsed.events.map { $0["action"]?.stringValue } == ["A", "B", "C"])
    }

    @Test func emptyBatch() throws {
        #expect(try batch(#"{"request_time": 5, "events": []}"#).events.isEmpty)
    }

    @Test func requestTimePrefersCurrentSpelling() throws {
        #expect(try batch(#"{"_request_time": 1, "request_time": 2, "events": []}"#).requestTime == .number("2"))
        #expect(try batch(#"{"_request_time": 1, "events": []}"#).requestTime == .number("1"))
    }

    @Test func unknownActionsAndEventsWithoutSubjectAreAccepted() throws {
        let parsed = try batch(#"{"events": [{"action": "SOMETHING_NEW_IN_2027", "verb": "x"}, {"action": "LOGIN", "subject": null}]}"#)
        #expect(parsed.events.count == 2)
    }

    @Test func bodiesThatAreNotEventBatchesAreUnrecognised() {
        #expect(reason("not json at all")?.hasPrefix("not JSON") == true)
        #expect(reason(#"{"id": 12, "first_name": "Ann", "deleted": false, "request_time": 3}"#) == #"no "events" key"#)
        #expect(reason(#"{"events": {"action": "A"}}"#) == #""events" is not an array"#)
        #expect(reason(#"{"events": [1]}"#) == "event 0 is not an object")
        #expect(reason(#"{"events": [{"action": "A"}, {"verb": "no action"}]}"#) == #"event 1 has no "action" string"#)
        #expect(reason(#"{"events": [{"action": ""}]}"#) == #"event 0 has no "action" string"#)
        #expect(reason(#"[1, 2]"#) == "JSON root is not an object")
    }
}
