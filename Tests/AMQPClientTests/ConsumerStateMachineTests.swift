import Synchronization
import Testing

@testable import AMQPClient

/// The consumer's bookkeeping without a broker: which settle calls are valid, what they write,
/// what confirms acknowledge, how blocks, deadlines and shutdown answer the callers.
@Suite struct ConsumerStateMachineTests {
    typealias Machine = ConsumerStateMachine<FakeSettleWaiter>

    let start = ContinuousClock.now

    func connectedMachine(deliveries: [UInt64] = [1, 2, 3]) -> Machine {
        var machine = Machine(confirmTimeout: .seconds(5), shutdownTimeout: .seconds(3))
        machine.connected()
        for tag in deliveries {
            let handedOut = machine.delivered(deliveryTag: tag)
            #expect(handedOut)
        }
        return machine
    }

    func command(_ settlement: Machine.Command.Settlement, _ tag: UInt64, generation: UInt64 = 1) -> (Machine.Command, FakeSettleWaiter) {
        let waiter = FakeSettleWaiter()
        return (Machine.Command(settlement: settlement, deliveryTag: tag, generation: generation, waiter: waiter), waiter)
    }

    let copy = AMQPOutboundMessage(exchange: "", routingKey: "dead", properties: AMQPProperties(), body: [1])

    @Test func anAckIsWrittenThenAnsweredAndASecondSettleOfTheSameDeliveryIsRefused() {
        var machine = connectedMachine()
        let (ack, waiter) = command(.ack, 2)
        guard case .ack(deliveryTag: 2) = machine.take(ack, frameSize: 4096, now: start) else {
            Issue.record("expected an ack write")
            return
        }
        #expect(waiter.answers.isEmpty, "answered only once written")
        machine.wrote(ack, now: start)
        #expect(waiter.answers == [.success])
        let (again, second) = command(.nack(requeue: true), 2)
        #expect(machine.take(again, frameSize: 4096, now: start) == nil)
        #expect(second.answers == [.failure(.connectionLost)])
    }

    @Test func aDeliveryOfAnEarlierConnectionCannotBeSettledOnThisOne() {
        var machine = connectedMachine()
        machine.connected()  // reconnected: generation 2
        let (ack, waiter) = command(.ack, 1, generation: 1)
        #expect(machine.take(ack, frameSize: 4096, now: start) == nil)
        #expect(waiter.answers == [.failure(.connectionLost)])
    }

    @Test func aRepublishAcknowledgesTheOriginalOnlyAfterTheCopyIsConfirmed() {
        var machine = connectedMachine()
        let (republish, waiter) = command(.republishThenAck(copy), 3)
        guard case .publish = machine.take(republish, frameSize: 4096, now: start) else {
            Issue.record("expected a publish")
            return
        }
        machine.wrote(republish, now: start)
        #expect(waiter.answers.isEmpty)
        let toAck = machine.confirmed(upTo: 1, multiple: false, success: true)
        #expect(toAck.map(\.deliveryTag) == [3])
        #expect(!machine.unsettled.contains(3))
    }

    @Test func aNackedCopyFailsTheCallAndLeavesTheOriginalUnsettled() {
        var machine = connectedMachine()
        let (republish, waiter) = command(.republishThenAck(copy), 1)
        _ = machine.take(republish, frameSize: 4096, now: start)
        machine.wrote(republish, now: start)
        #expect(machine.confirmed(upTo: 1, multiple: false, success: false).isEmpty)
        #expect(waiter.answers == [.failure(.nacked)])
        #expect(machine.unsettled.contains(1))
    }

    @Test func aCopyTheBrokerReturnedAsUnroutableFailsTheCallAndLeavesTheOriginalUnsettled() {
        var machine = connectedMachine()
        let (first, firstWaiter) = command(.republishThenAck(copy), 1)
        var other = copy
        other.routingKey = "elsewhere"
        let (second, secondWaiter) = command(.republishThenAck(other), 2)
        for command in [first, second] {
            _ = machine.take(command, frameSize: 4096, now: start)
            machine.wrote(command, now: start)
        }
        // basic.return for the first copy, then one confirm for both.
        machine.returnedRepublish(routingKey: copy.routingKey, messageID: copy.properties.messageID)
        let toAck = machine.confirmed(upTo: 2, multiple: true, success: true)
        #expect(toAck.map(\.deliveryTag) == [2], "only the copy that reached a queue acknowledges its original")
        #expect(firstWaiter.answers == [.failure(.nacked)])
        #expect(secondWaiter.answers.isEmpty, "answered once its ack is written")
        #expect(machine.unsettled.contains(1))
    }

    @Test func anUnconfirmedCopyTimesOut() {
        var machine = connectedMachine()
        let (republish, waiter) = command(.republishThenAck(copy), 1)
        _ = machine.take(republish, frameSize: 4096, now: start)
        machine.wrote(republish, now: start)
        #expect(machine.tick(now: start + .seconds(4)) == .wait(.seconds(1)))
        _ = machine.tick(now: start + .seconds(5))
        #expect(waiter.answers == [.failure(.confirmTimeout)])
    }

    @Test func whileBlockedRepublishesAreHeldThenRetakenOrFailAtTheirDeadline() {
        var machine = connectedMachine()
        _ = machine.setBlocked(true)
        let (first, firstWaiter) = command(.republishThenAck(copy), 1)
        #expect(machine.take(first, frameSize: 4096, now: start) == nil, "held")
        let (ack, ackWaiter) = command(.ack, 2)
        #expect(machine.take(ack, frameSize: 4096, now: start) != nil, "acks still flow while blocked")
        machine.wrote(ack, now: start)
        #expect(ackWaiter.answers == [.success])
        let retaken = machine.setBlocked(false)
        #expect(retaken.map(\.deliveryTag) == [1])
        #expect(firstWaiter.answers.isEmpty)

        _ = machine.setBlocked(true)
        let (second, secondWaiter) = command(.republishThenAck(copy), 3)
        _ = machine.take(second, frameSize: 4096, now: start)
        _ = machine.tick(now: start + .seconds(6))
        #expect(secondWaiter.answers == [.failure(.blocked)])
    }

    @Test func aConfirmArrivingAfterTheCallerSettledOtherwiseAcknowledgesNothing() {
        var machine = connectedMachine()
        let (republish, _) = command(.republishThenAck(copy), 1)
        _ = machine.take(republish, frameSize: 4096, now: start)
        machine.wrote(republish, now: start)
        // The caller's backstop gave up and it nacked the delivery meanwhile.
        let (nack, _) = command(.nack(requeue: true), 1)
        _ = machine.take(nack, frameSize: 4096, now: start)
        machine.wrote(nack, now: start)
        #expect(machine.confirmed(upTo: 1, multiple: false, success: true).isEmpty, "no ack for a settled delivery tag")
    }

    @Test func aRepublishHeldAgainByAFlappingBlockKeepsItsFirstDeadline() {
        var machine = connectedMachine()
        _ = machine.setBlocked(true)
        let (republish, waiter) = command(.republishThenAck(copy), 1)
        _ = machine.take(republish, frameSize: 4096, now: start)
        let retaken = machine.setBlocked(false)
        _ = machine.setBlocked(true)  // blocked again before it could be written
        for command in retaken { #expect(machine.take(command, frameSize: 4096, now: start + .seconds(4)) == nil) }
        _ = machine.tick(now: start + .seconds(5))
        #expect(waiter.answers == [.failure(.blocked)], "deadline 5 s from the first hold, not from the second")
    }

    @Test func anUnencodableCopyIsRefusedWithNothingWritten() {
        var machine = connectedMachine()
        var huge = copy
        huge.routingKey = String(repeating: "r", count: 256)
        let (republish, waiter) = command(.republishThenAck(huge), 1)
        #expect(machine.take(republish, frameSize: 4096, now: start) == nil)
        #expect(waiter.answers == [.failure(.unencodable)])
        #expect(machine.unsettled.contains(1), "the caller still owns the delivery")
    }

    @Test func shutdownHandsOutNothingMoreAndStopsOnceEverythingIsSettledOrAtItsDeadline() {
        var machine = connectedMachine(deliveries: [1])
        let first = machine.requestStop(now: start)
        let second = machine.requestStop(now: start)
        let handedOut = machine.delivered(deliveryTag: 2)
        #expect(first && !second, "only the first request cancels")
        #expect(!handedOut, "not handed out after shutdown began")
        guard case .wait = machine.tick(now: start + .seconds(1)) else {
            Issue.record("one delivery is still unsettled")
            return
        }
        #expect(machine.tick(now: start + .seconds(3)) == .stopped(unsettled: 1))

        var settled = connectedMachine(deliveries: [1])
        _ = settled.requestStop(now: start)
        let (ack, _) = command(.ack, 1)
        _ = settled.take(ack, frameSize: 4096, now: start)
        settled.wrote(ack, now: start)
        #expect(settled.tick(now: start) == .stopped(unsettled: 0))
    }

    @Test func aRepublishUnderWayAtTheShutdownDeadlineStillGetsItsConfirm() {
        var machine = connectedMachine(deliveries: [1, 2])
        let (republish, waiter) = command(.republishThenAck(copy), 1)
        #expect(machine.take(republish, frameSize: 4096, now: start) == .publish(copy))
        machine.wrote(republish, now: start)  // confirm due by start + 5 s
        _ = machine.requestStop(now: start + .seconds(1))  // shutdown deadline start + 4 s
        guard case .wait(let timeout) = machine.tick(now: start + .milliseconds(4500)) else {
            Issue.record("stopped with the copy written and unconfirmed: its original would be redelivered too")
            return
        }
        #expect(timeout == .milliseconds(500), "waits until the copy's confirm deadline, no longer")
        let acknowledge = machine.confirmed(upTo: 1, multiple: false, success: true)
        #expect(acknowledge.map(\.deliveryTag) == [1], "the original is acknowledged after the deadline")
        #expect(machine.tick(now: start + .milliseconds(4600)) == .stopped(unsettled: 1), "delivery 2 was never settled")
        #expect(waiter.answers.isEmpty, "answered by the owner once the ack is written")

        var unconfirmed = connectedMachine(deliveries: [1])
        let (never, neverWaiter) = command(.republishThenAck(copy), 1)
        _ = unconfirmed.take(never, frameSize: 4096, now: start)
        unconfirmed.wrote(never, now: start)
        _ = unconfirmed.requestStop(now: start)
        guard case .wait = unconfirmed.tick(now: start + .seconds(3)) else {
            Issue.record("stopped at the shutdown deadline with a republish still inside its confirm timeout")
            return
        }
        #expect(unconfirmed.tick(now: start + .seconds(5)) == .stopped(unsettled: 1), "bounded by the confirm timeout")
        #expect(neverWaiter.answers == [.failure(.confirmTimeout)])
    }

    @Test func noRepublishIsTakenAfterTheShutdownDeadline() {
        var machine = connectedMachine(deliveries: [1, 2])
        _ = machine.requestStop(now: start)  // deadline start + 3 s
        let (early, earlyWaiter) = command(.republishThenAck(copy), 1)
        #expect(machine.take(early, frameSize: 4096, now: start + .seconds(2)) == .publish(copy), "before the deadline: taken")
        let (late, lateWaiter) = command(.republishThenAck(copy), 2)
        #expect(machine.take(late, frameSize: 4096, now: start + .seconds(3)) == nil)
        #expect(lateWaiter.answers == [.failure(.shutdown)])
        #expect(machine.unsettled.contains(2), "left unsettled, so the broker redelivers it")
        let (ack, ackWaiter) = command(.ack, 2)
        #expect(machine.take(ack, frameSize: 4096, now: start + .seconds(3)) == .ack(deliveryTag: 2), "settling is still allowed")
        #expect(earlyWaiter.answers.isEmpty && ackWaiter.answers.isEmpty)
    }

    @Test func shutdownEndsAtTheDeadlinePlusTheConfirmTimeoutWhateverIsPending() {
        // A republish held while the broker blocks, written once it unblocks, gets a fresh confirm
        // deadline: shutdown must still end at its own limit (3 s + 5 s here).
        var machine = connectedMachine(deliveries: [1])
        _ = machine.setBlocked(true)
        let (republish, waiter) = command(.republishThenAck(copy), 1)
        #expect(machine.take(republish, frameSize: 4096, now: start) == nil, "held")
        _ = machine.requestStop(now: start)
        let retaken = machine.setBlocked(false)
        for command in retaken {
            #expect(machine.take(command, frameSize: 4096, now: start + .milliseconds(2500)) == .publish(copy))
            machine.wrote(command, now: start + .seconds(6))  // confirm due by start + 11 s
        }
        guard case .wait(let timeout) = machine.tick(now: start + .seconds(7)) else {
            Issue.record("stopped before the limit with a republish under way")
            return
        }
        #expect(timeout == .seconds(1), "wakes at the limit, start + 8 s")
        #expect(machine.tick(now: start + .seconds(8)) == .stopped(unsettled: 1))
        #expect(waiter.answers.isEmpty, "answered by the owner's final failOutstanding")
    }

    @Test func losingTheConnectionAnswersEveryWaitingCaller() {
        var machine = connectedMachine()
        let (republish, pending) = command(.republishThenAck(copy), 1)
        _ = machine.take(republish, frameSize: 4096, now: start)
        machine.wrote(republish, now: start)
        _ = machine.setBlocked(true)
        let (held, heldWaiter) = command(.republishThenAck(copy), 2)
        _ = machine.take(held, frameSize: 4096, now: start)
        machine.failOutstanding(AMQPError(.connectionLost, "gone"))
        #expect(pending.answers == [.failure(.connectionLost)])
        #expect(heldWaiter.answers == [.failure(.connectionLost)])
        #expect(machine.isIdle)
    }
}

extension ConsumerStateMachine.Write: Equatable {
    public static func == (lhs: Self, rhs: Self) -> Bool {
        switch (lhs, rhs) {
        case (.ack(let a), .ack(let b)): a == b
        case (.nack(let a, let x), .nack(let b, let y)): a == b && x == y
        case (.publish(let a), .publish(let b)): a.routingKey == b.routingKey && a.body == b.body
        default: false
        }
    }
}

/// Records its answers. Thread-safe.
final class FakeSettleWaiter: SettleWaiter, Sendable {
    private let state = Mutex<[FakeWaiter.Answer]>([])
    var answers: [FakeWaiter.Answer] { state.withLock { $0 } }
    func answer(_ result: Result<Void, AMQPError>) {
        state.withLock { answers in
            guard answers.isEmpty else { return }
            switch result {
            case .success: answers.append(.success)
            case .failure(let error): answers.append(.failure(error.kind))
            }
        }
    }
}
