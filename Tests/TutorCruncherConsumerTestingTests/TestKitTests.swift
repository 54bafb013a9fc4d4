import Foundation
import Synchronization
import Testing
import TutorCruncherConsumer
import TutorCruncherConsumerTesting

/// The test kit: its events decode through every typed view, and its harness makes the decisions
/// the processor makes.
@Suite struct TestSubjectsTests {
    func event(_ subject: TestSubject) throws -> TutorCruncherEvent {
        try TestEvents.event(.createdAClient, subject: subject)
    }

    @Test func peopleCarryTheirContactUnderUserAndTheirOwnFields() throws {
        let tutor = try #require(try event(TestSubjects.tutor(id: 11)).subject?.tutor)
        #expect(tutor.email == "jane.tutor@example.com" && tutor.contact.fullName == "Jane Tutor")
        #expect(tutor.status == "approved" && tutor.defaultRate == Decimal(string: "25.00"))
        #expect(tutor.reviewDuration == .seconds(2 * 86_400 + 9 * 3600))
        let client = try #require(try event(TestSubjects.client()).subject?.client)
        #expect(client.invoiceBalance == Decimal(string: "55.90") && client.paidRecipients?.first?.id == 31 && client.isTaxable == true)
        let student = try #require(try event(TestSubjects.student()).subject?.student)
        #expect(student.school == "Hillside Academy" && student.client?.id == 21)
        let affiliate = try #require(try event(TestSubjects.affiliate()).subject?.affiliate)
        #expect(affiliate.commissionRate == Decimal(string: "10.00"))
    }

    @Test func workAndRecordsDecodeThroughTheirViews() throws {
        let job = try #require(try event(TestSubjects.job()).subject?.job)
        #expect(job.tutors?.first?.tutorID == 11 && job.tutors?.first?.payRate == Decimal(string: "25.00"))
        #expect(job.students?.first?.studentID == 31 && job.students?.first?.payingClient?.id == 21)
        #expect(try event(TestSubjects.application()).subject?.application?.job?.id == 5)
        let lesson = try #require(try event(TestSubjects.lesson()).subject?.lesson)
        #expect(lesson.units == Decimal(1) && lesson.start != nil)
        #expect(lesson.students?.first?.studentID == 31 && lesson.students?.first?.chargeRate == Decimal(string: "45.00"))
        #expect(lesson.tutors?.first?.name == "Jane Tutor")
        let report = try #require(try event(TestSubjects.report()).subject?.report)
        #expect(report.lesson?.id == 91 && report.creator?.id == 11 && report.student?.id == 31 && report.approved == false)
        #expect(try event(TestSubjects.note()).subject?.note?.focus?.id == 21)
        let task = try #require(try event(TestSubjects.task()).subject?.task)
        #expect(task.admin?.id == 7 && task.complete == false && task.dueDate != nil)
        let concern = try #require(try event(TestSubjects.safeguardingConcern()).subject?.safeguardingConcern)
        #expect(concern.student?.id == 31 && concern.creator?.id == 11 && concern.dateRaised != nil)
    }

    @Test func moneyDecodesExactly() throws {
        let invoice = try #require(try event(TestSubjects.invoice(id: 41, [("gross", "120.10")])).subject?.invoice)
        #expect(invoice.gross == Decimal(string: "120.10") && invoice.displayID == "INV-41")
        #expect(try event(TestSubjects.creditRequest()).subject?.creditRequest?.amount == Decimal(string: "200.00"))
        #expect(try event(TestSubjects.paymentOrder()).subject?.paymentOrder?.payee?.id == 11)
        let charge = try #require(try event(TestSubjects.adHocCharge()).subject?.adHocCharge)
        #expect(charge.clientCost == Decimal(string: "30.00") && charge.dateOccurred != nil)
        #expect(try event(TestSubjects.paymentOrder()).subject?.paymentOrder?.stillToPay == Decimal(string: "480.00"))
        #expect(try event(TestSubjects.package()).subject?.package?.price == Decimal(string: "400.00"))
    }

    @Test func eventsCarryTheSendersFieldsAndDistinctIDs() throws {
        let first = try TestEvents.event(.clientPaidInvoice, subject: TestSubjects.invoice(), id: 1)
        let second = try TestEvents.event(.clientPaidInvoice, subject: TestSubjects.invoice(), id: 2)
        #expect(first.action == .clientPaidInvoice && first.branch == 590 && first.actor?.id == 7)
        #expect(first.eventID != second.eventID && first.eventID.hasSuffix("-0"))
        #expect(first.receivedAt != nil && first.timestamp != nil)
    }
}

@Suite struct HandlerHarnessTests {
    struct Downstream: Error, CustomStringConvertible {
        var description: String { "billing said no" }
    }

    @Test func aHandlerThatRecoversIsRetriedAfterThePolicysWaitsThenAcknowledged() async throws {
        let failures = Mutex(2)
        let harness = HandlerHarness(retryPolicy: .init(maxAttempts: 5, initialDelay: .seconds(5), multiplier: 2, jitter: 0)) { _, _ in
            let fail = failures.withLock { count in
                defer { count -= 1 }
                return count > 0
            }
            if fail { throw Downstream() }
        }
        let outcomes = await harness.deliverUntilSettled(try TestEvents.event(.clientPaidInvoice, subject: TestSubjects.invoice()))
        #expect(outcomes == [.retried(after: .seconds(5)), .retried(after: .seconds(10)), .acknowledged])
        #expect(harness.decisions.map(\.attempt) == [1, 2, 3])
    }

    @Test func aHandlerThatKeepsFailingIsDeadLetteredWithTheLastError() async throws {
        let harness = HandlerHarness(retryPolicy: .init(maxAttempts: 3, jitter: 0)) { _, context in
            #expect(context.routingKey == "CLIENT_PAID_INVOICE")
            throw Downstream()
        }
        let outcomes = await harness.deliverUntilSettled(try TestEvents.event(.clientPaidInvoice))
        #expect(outcomes.count == 3)
        #expect(outcomes.last == .deadLettered(reason: "failed 3 times; last error: billing said no"))
    }
}
