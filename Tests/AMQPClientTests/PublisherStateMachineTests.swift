import Synchronization
import Testing

@testable import AMQPClient

/// The publisher's bookkeeping without a broker: what it writes, in which order, what confirms
/// answer, and when deadlines fail calls or ask for a reconnect.
@Suite struct PublisherStateMachineTests {
    typealias Machine = PublisherStateMachine<FakeWaiter>

    let start = ContinuousClock.now

    func machine(maxUnconfirmed: Int = 1024, confirmTimeout: Duration = .seconds(5)) -> Machine {
        Machine(configuration: .init(maxUnconfirmed: maxUnconfirmed, confirmTimeout: confirmTimeout, shutdownTimeout: .seconds(2)), now: start)
    }

    func messages(_ count: Int, _ prefix: String = "m") -> [AMQPOutboundMessage] {
        (0..<count).map { AMQPOutboundMessage(exchange: "x", routingKey: "\(prefix)\($0)", properties: AMQPProperties(), body: []) }
    }

    /// Writes one round; returns the routing keys written.
    func writeRound(_ machine: inout Machine, at now: ContinuousClock.Instant? = nil) -> [String] {
        var written: [String] = []
        while let message = machine.nextMessage(now: now ?? start) {
            written.append(message.routingKey)
            machine.wrote()
        }
        machine.endRound(now: now ?? start)
        return written
    }

    @Test func aCallIsAnsweredOnceEveryMessageIsConfirmed() {
        var machine = machine()
        let waiter = FakeWaiter()
        machine.submit(messages(3), waiter: waiter, frameSize: 4096, now: start)
        #expect(writeRound(&machine) == ["m0", "m1", "m2"])
        machine.confirmed(upTo: 2, multiple: true, now: start)
        #expect(waiter.answers.isEmpty)
        machine.confirmed(upTo: 3, multiple: false, now: start)
        #expect(waiter.answers == [.success])
        #expect(machine.unconfirmed == 0)
    }

    /// Idle (a caller may write its call itself) only with nothing unconfirmed, nothing left to
    /// write, not blocked and not stopping.
    @Test func isIdleOnlyWithNothingOutstandingQueuedBlockedOrStopping() {
        var machine = machine(maxUnconfirmed: 2)
        #expect(machine.isIdle)
        machine.submit(messages(3), waiter: FakeWaiter(), frameSize: 4096, now: start)
        #expect(!machine.isIdle)  // queued
        #expect(writeRound(&machine).count == 2)
        #expect(!machine.isIdle)  // unconfirmed, and one left to write
        machine.confirmed(upTo: 2, multiple: true, now: start)
        #expect(!machine.isIdle)  // one left to write
        #expect(writeRound(&machine).count == 1)
        #expect(!machine.isIdle)  // unconfirmed
        machine.confirmed(upTo: 3, multiple: false, now: start)
        #expect(machine.isIdle)
        machine.setBlocked(true)
        #expect(!machine.isIdle)
        machine.setBlocked(false)
        #expect(machine.isIdle)
        machine.requestStop(now: start)
        #expect(!machine.isIdle)
    }

    /// A call submitted to an idle machine bounds the owner's next wait by its deadline at once,
    /// not only after the next sweep (a caller may write it while the owner sleeps).
    @Test func aCallsDeadlineBoundsTheNextWaitBeforeAnySweepFindsIt() {
        var machine = machine(confirmTimeout: .milliseconds(300))
        #expect(machine.tick(now: start) == .wait(.seconds(1)))  // swept: nothing due
        let submitted = start.advanced(by: .milliseconds(10))
        machine.submit(messages(1), waiter: FakeWaiter(), frameSize: 4096, now: submitted)
        #expect(writeRound(&machine, at: submitted) == ["m0"])
        #expect(machine.tick(now: start.advanced(by: .milliseconds(20))) == .wait(.milliseconds(290)))
    }

    @Test func emptyBlockedAndUnencodableCallsAreAnsweredAtOnceWithNothingWritten() {
        var machine = machine()
        let empty = FakeWaiter()
        machine.submit([], waiter: empty, frameSize: 4096, now: start)
        let unencodable = FakeWaiter()
        var bad = messages(2)
        bad[1].routingKey = String(repeating: "k", count: 300)
        machine.submit(bad, waiter: unencodable, frameSize: 4096, now: start)
        machine.setBlocked(true)
        let blocked = FakeWaiter()
        machine.submit(messages(1), waiter: blocked, frameSize: 4096, now: start)
        #expect(empty.answers == [.success])
        #expect(unencodable.answers == [.failure(.unencodable)])
        #expect(blocked.answers == [.failure(.blocked)])
        #expect(writeRound(&machine).isEmpty)
    }

    @Test func smallCallsGoAheadOfBulkAndBulkTakesTurns() {
        var machine = machine()
        machine.submit(messages(150, "bulk"), waiter: FakeWaiter(), frameSize: 4096, now: start)
        machine.submit(messages(2, "hook"), waiter: FakeWaiter(), frameSize: 4096, now: start)
        let written = writeRound(&machine)
        #expect(Array(written.prefix(2)) == ["hook0", "hook1"])
        #expect(written.count == 152, "one round writes up to 256 messages")
        #expect(written[2] == "bulk0")
    }

    @Test func theWindowCapsUnconfirmedMessagesAndConfirmsReopenIt() {
        var machine = machine(maxUnconfirmed: 4)
        machine.submit(messages(10), waiter: FakeWaiter(), frameSize: 4096, now: start)
        #expect(writeRound(&machine).count == 4)
        #expect(machine.tick(now: start) != .writeMore)
        machine.confirmed(upTo: 2, multiple: true, now: start)
        #expect(machine.tick(now: start) == .writeMore)
        #expect(writeRound(&machine) == ["m4", "m5"])
    }

    @Test func aNackFailsTheCall() {
        var machine = machine()
        let waiter = FakeWaiter()
        machine.submit(messages(2), waiter: waiter, frameSize: 4096, now: start)
        _ = writeRound(&machine)
        machine.rejected(upTo: 1, multiple: false)
        #expect(waiter.answers == [.failure(.nacked)])
        machine.confirmed(upTo: 2, multiple: false, now: start)
        #expect(waiter.answers.count == 1, "answered once")
    }

    @Test func nacksInARowAskForAFreshConnectionAtMostOncePerInterval() {
        var machine = machine()
        let waiters = (0..<8).map { _ in FakeWaiter() }
        for waiter in waiters { machine.submit(messages(1), waiter: waiter, frameSize: 4096, now: start) }
        _ = writeRound(&machine)
        machine.rejected(upTo: 1, multiple: false)
        machine.rejected(upTo: 2, multiple: false)
        guard case .wait = machine.tick(now: start) else {
            Issue.record("two nacks are not yet a stuck channel")
            return
        }
        machine.confirmed(upTo: 3, multiple: false, now: start)
        machine.rejected(upTo: 5, multiple: true)
        guard case .wait = machine.tick(now: start) else {
            Issue.record("an ack in between resets the count")
            return
        }
        machine.rejected(upTo: 6, multiple: false)
        let outcome = machine.tick(now: start)
        guard case .reconnect(let error) = outcome else {
            Issue.record("expected a reconnect after three nacks in a row, got \(outcome)")
            return
        }
        #expect(error.kind == .connectionLost, "waiting calls' messages were not refused: their outcome is unknown")

        // On the next connection the broker still refuses: no second reconnect within the interval.
        machine.connected(now: start)
        for waiter in (0..<3).map({ _ in FakeWaiter() }) { machine.submit(messages(1), waiter: waiter, frameSize: 4096, now: start) }
        _ = writeRound(&machine)
        machine.rejected(upTo: 3, multiple: true)
        guard case .wait = machine.tick(now: start + .seconds(1)) else {
            Issue.record("reconnected twice within the interval")
            return
        }
        guard case .reconnect = machine.tick(now: start + .seconds(6)) else {
            Issue.record("expected a reconnect once the interval passed")
            return
        }

        // That fresh channel was refused too: the next reconnect waits twice as long (10 s).
        func refuseThree(at now: ContinuousClock.Instant) {
            machine.connected(now: now)
            for waiter in (0..<3).map({ _ in FakeWaiter() }) { machine.submit(messages(1), waiter: waiter, frameSize: 4096, now: now) }
            _ = writeRound(&machine, at: now)
            machine.rejected(upTo: 3, multiple: true)
        }
        refuseThree(at: start + .seconds(6))
        guard case .wait = machine.tick(now: start + .seconds(12)) else {
            Issue.record("the interval should have doubled")
            return
        }
        guard case .reconnect = machine.tick(now: start + .seconds(17)) else {
            Issue.record("expected a reconnect after the doubled interval")
            return
        }
    }

    @Test func aCallWithoutProgressTimesOutAndAStuckChannelAsksForAReconnect() {
        var machine = machine(confirmTimeout: .seconds(5))
        let waiter = FakeWaiter()
        machine.submit(messages(1), waiter: waiter, frameSize: 4096, now: start)
        _ = writeRound(&machine)
        #expect(machine.tick(now: start + .seconds(4)) != .reconnect(AMQPError(.confirmTimeout, "")))
        #expect(waiter.answers.isEmpty)
        let outcome = machine.tick(now: start + .seconds(6))
        #expect(waiter.answers == [.failure(.confirmTimeout)])
        guard case .reconnect = outcome else {
            Issue.record("expected a reconnect, got \(outcome)")
            return
        }
    }

    /// A call far larger than the confirm deadline allows to write and confirm at once succeeds as
    /// long as it keeps making progress: 5,000 messages, 1 s deadline, 10 s of steady confirms.
    @Test func aLargeCallThatKeepsProgressingOutlastsItsDeadline() {
        var machine = machine(maxUnconfirmed: 256, confirmTimeout: .seconds(1))
        let waiter = FakeWaiter()
        machine.submit(messages(5000), waiter: waiter, frameSize: 4096, now: start)
        var now = start
        var confirmed: UInt64 = 0
        var steps = 0
        while waiter.answers.isEmpty, steps < 1000 {
            steps += 1
            now = now + .milliseconds(500)
            confirmed += UInt64(writeRound(&machine, at: now).count)
            if confirmed > 0 { machine.confirmed(upTo: confirmed, multiple: true, now: now) }
            switch machine.tick(now: now) {
            case .reconnect(let error): Issue.record("reconnected: \(error)")
            default: break
            }
        }
        #expect(waiter.answers == [.success])
        #expect(now - start >= .seconds(10), "the call lasted ten times its deadline")
    }

    @Test func confirmsForOthersCountAsProgressForCallsWaitingBehindThem() {
        var machine = machine(maxUnconfirmed: 1, confirmTimeout: .seconds(5))
        let first = FakeWaiter()
        let second = FakeWaiter()
        machine.submit(messages(1, "a"), waiter: first, frameSize: 4096, now: start)
        #expect(writeRound(&machine) == ["a0"])
        machine.submit(messages(1, "b"), waiter: second, frameSize: 4096, now: start)
        #expect(writeRound(&machine).isEmpty, "the window is full")
        // Four seconds later the first is confirmed; the second, never written yet, waited behind it.
        machine.confirmed(upTo: 1, multiple: false, now: start + .seconds(4))
        #expect(machine.tick(now: start + .seconds(6)) == .writeMore)
        #expect(second.answers.isEmpty, "the window made progress at 4 s: its deadline is 9 s")
        #expect(writeRound(&machine, at: start + .seconds(6)) == ["b0"])
        machine.confirmed(upTo: 2, multiple: false, now: start + .seconds(7))
        #expect(first.answers == [.success])
        #expect(second.answers == [.success])
    }

    @Test func aMessageLeftUnconfirmedWhileOthersAreConfirmedEndsInAReconnect() {
        var machine = machine(confirmTimeout: .seconds(5))
        let stuck = FakeWaiter()
        machine.submit(messages(1, "stuck"), waiter: stuck, frameSize: 4096, now: start)
        _ = writeRound(&machine)
        // Others keep being written and confirmed (out of order) every second; tag 1 never is.
        var tag: UInt64 = 2
        for second in 1...11 {
            let now = start + .seconds(second)
            machine.submit(messages(1, "ok\(second)"), waiter: FakeWaiter(), frameSize: 4096, now: now)
            _ = writeRound(&machine, at: now)
            machine.confirmed(upTo: tag, multiple: false, now: now)
            tag += 1
            let outcome = machine.tick(now: now)
            if case .reconnect = outcome {
                #expect(second > 10, "not before twice the confirm timeout")
                #expect(stuck.answers == [.failure(.confirmTimeout)])
                return
            }
            #expect(stuck.answers.isEmpty, "at \(second) s")
        }
        Issue.record("the stuck message never ended in a reconnect")
    }

    @Test func aCallWhoseWaiterGaveUpIsNotWrittenFurther() {
        var machine = machine()
        let waiter = FakeWaiter()
        machine.submit(messages(200), waiter: waiter, frameSize: 4096, now: start)
        #expect(writeRound(&machine).count == 200)
        let abandoned = FakeWaiter()
        machine.submit(messages(300, "late"), waiter: abandoned, frameSize: 4096, now: start)
        abandoned.answer(.failure(AMQPError(.confirmTimeout, "the caller's backstop")))
        #expect(writeRound(&machine).isEmpty)
    }

    @Test func losingTheConnectionAnswersEveryWaiterAndTagsRestart() {
        var machine = machine()
        let waiters = (0..<3).map { _ in FakeWaiter() }
        for waiter in waiters { machine.submit(messages(2), waiter: waiter, frameSize: 4096, now: start) }
        _ = writeRound(&machine)
        machine.failOutstanding(AMQPError(.connectionLost, "socket closed"), now: start)
        #expect(waiters.allSatisfy { $0.answers == [.failure(.connectionLost)] })
        machine.connected(now: start)
        let next = FakeWaiter()
        machine.submit(messages(1), waiter: next, frameSize: 4096, now: start)
        _ = writeRound(&machine)
        machine.confirmed(upTo: 1, multiple: false, now: start)
        #expect(next.answers == [.success], "the new channel's first tag is 1")
    }

    @Test func shutdownWaitsForOutstandingConfirmsThenFailsTheRestAtItsDeadline() {
        var machine = machine()
        let waiter = FakeWaiter()
        machine.submit(messages(1), waiter: waiter, frameSize: 4096, now: start)
        _ = writeRound(&machine)
        machine.requestStop(now: start)
        guard case .wait = machine.tick(now: start + .seconds(1)) else {
            Issue.record("should wait for the confirm")
            return
        }
        #expect(machine.tick(now: start + .seconds(3)) == .stopped)
        #expect(waiter.answers == [.failure(.shutdown)])

        var quick = self.machine()
        quick.requestStop(now: start)
        #expect(quick.tick(now: start) == .stopped, "nothing outstanding: stops at once")
    }
}

extension PublisherStateMachine.TickOutcome: CustomStringConvertible {
    public var description: String {
        switch self {
        case .writeMore: "writeMore"
        case .wait(let duration): "wait(\(duration))"
        case .reconnect(let error): "reconnect(\(error))"
        case .stopped: "stopped"
        }
    }
}

/// Records its answers. Thread-safe.
final class FakeWaiter: PublishWaiter, Sendable {
    enum Answer: Equatable {
        case success
        case failure(AMQPError.Kind)
    }

    private let state = Mutex<[Answer]>([])

    var answers: [Answer] { state.withLock { $0 } }
    var hasAnswer: Bool { !answers.isEmpty }
    func noteProgress() {}
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
