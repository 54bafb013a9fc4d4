import DequeModule

/// A caller waiting for the outcome of one publish call, as the state machine sees it.
protocol PublishWaiter: AnyObject {
    /// `true` once the caller has its answer (from here, or from a backstop that gave up waiting).
    var hasAnswer: Bool { get }
    /// A message of this call was written or confirmed (the caller's own deadline measures progress).
    func noteProgress()
    /// Answers the caller; later answers are ignored.
    func answer(_ result: Result<Void, AMQPError>)
}

/// The publisher's bookkeeping for one connection, without the connection: which calls wait,
/// which messages to write next, which delivery tags belong to whom, and when a call, the channel or
/// a shutdown has run out of time.
///
/// The owner thread feeds it what happened (calls submitted, messages written, confirms, blocks,
/// the clock) and does what it says: write the message ``nextMessage()`` returns, reconnect or stop
/// when ``tick(now:)`` says so. Answers go straight to the waiters. No system calls, no clock of its
/// own: unit-tested without a broker.
///
/// Write policy: at most `maxUnconfirmed` messages written and unconfirmed; a call of at most
/// `smallBatch` messages (a webhook's) goes ahead of bulk (spool forwarding); calls take turns of
/// `turnSize` messages, and one round of writing stops after `roundSize` so confirms are read in
/// between. A call whose waiter already has an answer (its deadline passed) is not written further.
///
/// Deadlines measure progress: a call fails with `.confirmTimeout` once neither it nor the window
/// (any confirm: they come in order) made progress for `confirmTimeout`. If such a call had messages
/// written, the channel is stuck and ``tick(now:)`` asks for a reconnect.
struct PublisherStateMachine<Waiter: PublishWaiter> {
    struct Configuration {
        var maxUnconfirmed: Int
        var confirmTimeout: Duration
        var shutdownTimeout: Duration
        var smallBatch = 100
        var turnSize = 64
        var roundSize = 256
        /// Deadlines are seconds long; checking them this often is enough.
        var sweepInterval: Duration = .milliseconds(100)
        /// Nacks in a row (no ack between them) after which the connection is replaced. A channel
        /// can go on refusing for ever while a fresh one would be accepted: RabbitMQ 3.10 rejects
        /// every publish of a channel that first used a quorum queue while the record still named
        /// a leader on a node that had just stopped.
        var nacksBeforeReconnect = 3
        /// At most one such reconnect this often (a queue that refuses on purpose, `reject-publish`
        /// when full, would otherwise have the publisher reconnect every few messages); doubled,
        /// up to `maxNackReconnectInterval`, each time a fresh connection is refused again before
        /// anything is acknowledged.
        var nackReconnectInterval: Duration = .seconds(5)
        var maxNackReconnectInterval: Duration = .seconds(300)
    }

    /// What the owner thread should do after a ``tick(now:)``.
    enum TickOutcome: Equatable {
        /// Write more now (room in the window and messages waiting).
        case writeMore
        /// Wait for the socket or a wake-up, at most this long.
        case wait(Duration)
        /// The broker stopped confirming: drop this connection and connect again.
        case reconnect(AMQPError)
        /// Shutdown has finished (or its deadline passed and every waiter was answered).
        case stopped
    }

    /// One publish call being written and confirmed.
    final class Batch {
        private(set) var waiter: Waiter?
        let messages: [AMQPOutboundMessage]
        private(set) var unconfirmed: Int
        var nextIndex = 0
        private(set) var lastProgress: ContinuousClock.Instant

        init(messages: [AMQPOutboundMessage], waiter: Waiter, now: ContinuousClock.Instant) {
            self.waiter = waiter
            self.messages = messages
            self.unconfirmed = messages.count
            self.lastProgress = now
        }

        var isSettled: Bool { waiter?.hasAnswer ?? true }
        var isFullyWritten: Bool { nextIndex >= messages.count }

        func progressed(at now: ContinuousClock.Instant) {
            lastProgress = now
            waiter?.noteProgress()
        }

        func confirmOne(at now: ContinuousClock.Instant) {
            unconfirmed -= 1
            progressed(at: now)
            if unconfirmed <= 0 { settle(.success(())) }
        }

        func settle(_ result: Result<Void, AMQPError>) {
            waiter?.answer(result)
            waiter = nil
        }
    }

    let configuration: Configuration
    private var ledger = ConfirmLedger<Batch>()
    /// Every batch not yet known to be settled, oldest first (swept every `sweepInterval`).
    private var inFlight: Deque<Batch> = []
    /// Batches with messages still to write, in writing order.
    private var writing: Deque<Batch> = []
    /// Messages written and not yet confirmed.
    private(set) var unconfirmed = 0
    /// Messages nacked since the last ack.
    private var nacksInARow = 0
    /// The last time nacks had the connection replaced, and the interval before the next may.
    private var lastNackReconnect: ContinuousClock.Instant?
    private var nackReconnectWait: Duration
    /// An ack arrived since the last reconnect for nacks (the fresh channel helped).
    private var ackedSinceNackReconnect = true
    /// The broker asked publishers to pause (`connection.blocked`).
    private(set) var isBlocked = false
    /// When the broker last confirmed anything on this connection.
    private var windowProgress: ContinuousClock.Instant
    private var stopDeadline: ContinuousClock.Instant?
    private var nextSweep: ContinuousClock.Instant
    /// The earliest deadline the last sweep found, or of a call submitted since (progress only moves deadlines later).
    private var earliestDeadline: ContinuousClock.Instant?
    /// The batch the current round is writing, and how much of its turn and of the round is used.
    private var current: Batch?
    private var turnWritten = 0
    private var roundWritten = 0
    /// The clock reading the current round of writing started with.
    private var roundTime: ContinuousClock.Instant
    /// When each round's messages were written (the round's last tag): the oldest unconfirmed
    /// message's age, whatever the confirms of others say.
    private var writeTimes: Deque<(lastTag: UInt64, at: ContinuousClock.Instant)> = []

    init(configuration: Configuration, now: ContinuousClock.Instant) {
        self.configuration = configuration
        self.nackReconnectWait = configuration.nackReconnectInterval
        self.windowProgress = now
        self.nextSweep = now
        self.roundTime = now
    }

    /// Calls waiting for an answer or being written (including any already answered but not yet swept).
    var inFlightCount: Int { inFlight.count }
    var isStopping: Bool { stopDeadline != nil }

    // MARK: Inputs

    /// A new connection (tags restart at 1): forgets what the last one had outstanding.
    mutating func connected(now: ContinuousClock.Instant) {
        reset(now: now)
        isBlocked = false
    }

    /// Shutdown was requested: no new calls are expected; outstanding ones get `shutdownTimeout`.
    mutating func requestStop(now: ContinuousClock.Instant) {
        if stopDeadline == nil { stopDeadline = now.advanced(by: configuration.shutdownTimeout) }
    }

    /// A `publish` call. Answered at once when it is empty, the broker blocks publishing, or a
    /// message cannot be encoded in frames of `frameSize` (nothing of the call is then written);
    /// queued for writing otherwise.
    mutating func submit(_ messages: [AMQPOutboundMessage], waiter: Waiter, frameSize: Int, now: ContinuousClock.Instant) {
        if isBlocked { return waiter.answer(.failure(AMQPError(.blocked, "broker blocked publishing"))) }
        if messages.isEmpty { return waiter.answer(.success(())) }
        // Checked before anything of the call is written: a message rabbitmq-c cannot encode would
        // otherwise break the connection half-way through its frames.
        for (index, message) in messages.enumerated() {
            if let problem = message.encodingProblem(frameSize: frameSize) {
                return waiter.answer(.failure(AMQPError(.unencodable, "message \(index): \(problem)")))
            }
        }
        let batch = Batch(messages: messages, waiter: waiter, now: now)
        inFlight.append(batch)
        // Its deadline, for the owner's next wait (a sweep finds the rest).
        let deadline = now.advanced(by: configuration.confirmTimeout)
        earliestDeadline = min(earliestDeadline ?? deadline, deadline)
        if messages.count <= configuration.smallBatch { writing.prepend(batch) } else { writing.append(batch) }
    }

    /// Nothing written and unconfirmed, nothing waiting to be written, not blocked, not stopping: a
    /// call submitted now is written at once (as much of it as the window takes), and the broker has
    /// read everything written before.
    var isIdle: Bool { unconfirmed == 0 && writing.isEmpty && !isBlocked && stopDeadline == nil }

    /// `true` when the next round will write more than one message (worth corking the socket for).
    var nextRoundWritesSeveral: Bool {
        guard !isBlocked, unconfirmed + 1 < configuration.maxUnconfirmed else { return false }
        return writing.count > 1 || writing.first.map { $0.messages.count - $0.nextIndex > 1 } == true
    }

    /// The next message to write in this round, or `nil` when the round is over (window full,
    /// blocked, nothing left, or the round's size reached). Call ``wrote()`` after writing it, and
    /// ``endRound(now:)`` when this returns `nil`.
    mutating func nextMessage(now: ContinuousClock.Instant) -> AMQPOutboundMessage? {
        roundTime = now
        guard !isBlocked, unconfirmed < configuration.maxUnconfirmed, roundWritten < configuration.roundSize else { return nil }
        while true {
            if let batch = current {
                // (Whether its waiter gave up is checked once per turn: that takes a lock.)
                if turnWritten < configuration.turnSize, !batch.isFullyWritten {
                    return batch.messages[batch.nextIndex]
                }
                endTurn()
            }
            guard let next = writing.first else { return nil }
            if next.isSettled || next.isFullyWritten {
                writing.removeFirst()  // timed out or failed: its remaining messages are not sent
                continue
            }
            current = next
            turnWritten = 0
        }
    }

    /// The message ``nextMessage()`` returned is written: it takes the next delivery tag.
    mutating func wrote() {
        guard let batch = current else { return }
        ledger.register(batch)
        batch.nextIndex += 1
        unconfirmed += 1
        turnWritten += 1
        roundWritten += 1
    }

    /// The round of writing is over (``nextMessage()`` returned `nil`).
    mutating func endRound(now: ContinuousClock.Instant) {
        roundTime = now
        endTurn()
        if roundWritten > 0 { writeTimes.append((lastTag: ledger.nextTag - 1, at: now)) }
        roundWritten = 0
    }

    /// `basic.ack`: the messages are the broker's. A call is answered once all of its are.
    mutating func confirmed(upTo tag: UInt64, multiple: Bool, now: ContinuousClock.Instant) {
        ledger.settle(upTo: tag, multiple: multiple) { batch in
            unconfirmed -= 1
            batch.confirmOne(at: now)
        }
        windowProgress = now
        nacksInARow = 0
        ackedSinceNackReconnect = true
    }

    /// `basic.nack`: the broker refused the messages; their calls fail with `.nacked`.
    mutating func rejected(upTo tag: UInt64, multiple: Bool) {
        ledger.settle(upTo: tag, multiple: multiple) { batch in
            unconfirmed -= 1
            nacksInARow += 1
            batch.settle(.failure(AMQPError(.nacked, "broker rejected the message (basic.nack)")))
        }
    }

    /// `connection.blocked` / `connection.unblocked`.
    mutating func setBlocked(_ blocked: Bool) {
        isBlocked = blocked
    }

    /// The connection broke (or the owner gives up on it): every call still waiting gets `error`.
    mutating func failOutstanding(_ error: AMQPError, now: ContinuousClock.Instant) {
        for batch in inFlight { batch.settle(.failure(error)) }
        reset(now: now)
    }

    /// Checks deadlines (every `sweepInterval`, every time while stopping) and says what to do next.
    mutating func tick(now: ContinuousClock.Instant) -> TickOutcome {
        if stopDeadline != nil || now >= nextSweep {
            nextSweep = now.advanced(by: configuration.sweepInterval)
            if let outcome = sweep(now: now) { return outcome }
        }
        if nacksInARow >= configuration.nacksBeforeReconnect, lastNackReconnect.map({ now - $0 >= nackReconnectWait }) ?? true {
            // The last fresh channel did not help: wait longer before the next.
            nackReconnectWait = ackedSinceNackReconnect
                ? configuration.nackReconnectInterval : min(nackReconnectWait * 2, configuration.maxNackReconnectInterval)
            ackedSinceNackReconnect = false
            lastNackReconnect = now
            // Calls still waiting are answered by the owner with this error (`connectionLost`:
            // their messages' outcome on the old channel is unknown, not refused).
            return .reconnect(
                AMQPError(.connectionLost, "the broker refused \(nacksInARow) messages in a row; reconnecting for a fresh channel"))
        }
        if let stopDeadline {
            if inFlight.isEmpty { return .stopped }
            if now >= stopDeadline {
                failOutstanding(AMQPError(.shutdown, "shut down before the broker confirmed"), now: now)
                return .stopped
            }
        }
        if !isBlocked, unconfirmed < configuration.maxUnconfirmed, writing.contains(where: { !$0.isSettled && !$0.isFullyWritten }) {
            return .writeMore
        }
        var timeout = Duration.seconds(1)
        if let earliestDeadline { timeout = min(timeout, max(earliestDeadline, nextSweep) - now) }
        if let stopDeadline { timeout = min(timeout, stopDeadline - now) }
        return .wait(max(timeout, .zero))
    }

    // MARK: Internals

    private mutating func sweep(now: ContinuousClock.Instant) -> TickOutcome? {
        earliestDeadline = nil
        var stalled = false
        var kept: Deque<Batch> = []
        kept.reserveCapacity(inFlight.count)
        for batch in inFlight {
            let deadline = max(batch.lastProgress, windowProgress).advanced(by: configuration.confirmTimeout)
            if !batch.isSettled, deadline <= now {
                batch.settle(.failure(AMQPError(.confirmTimeout, "no confirm within \(configuration.confirmTimeout)")))
                // Written messages the broker has not confirmed for that long: the channel is stuck,
                // and their slots in the window would never come back. Start afresh.
                if batch.nextIndex > 0 { stalled = true }
            }
            if !batch.isSettled {
                earliestDeadline = min(earliestDeadline ?? deadline, deadline)
                kept.append(batch)
            }
        }
        inFlight = kept
        // Deadlines follow the window's progress, so a single message the broker never confirms
        // while it confirms others would wait for ever: bound the oldest one's age.
        if let oldest = ledger.oldestOutstanding {
            while let first = writeTimes.first, first.lastTag < oldest { writeTimes.removeFirst() }
            if let first = writeTimes.first, now - first.at > configuration.confirmTimeout * 2 {
                failOutstanding(AMQPError(.confirmTimeout, "a message went unconfirmed for \(configuration.confirmTimeout * 2)"), now: now)
                return .reconnect(
                    AMQPError(.confirmTimeout, "the broker left a message unconfirmed for \(configuration.confirmTimeout * 2); reconnecting"))
            }
        } else {
            writeTimes.removeAll()
        }
        if stalled {
            return .reconnect(AMQPError(.confirmTimeout, "the broker stopped confirming for \(configuration.confirmTimeout); reconnecting"))
        }
        return nil
    }

    private mutating func endTurn() {
        guard let batch = current else { return }
        if turnWritten > 0 { batch.progressed(at: roundTime) }
        current = nil
        turnWritten = 0
        // The batch's turn is over: to the back of the line if it has more to write.
        if writing.first === batch {
            writing.removeFirst()
            if !batch.isFullyWritten && !batch.isSettled { writing.append(batch) }
        }
    }

    private mutating func reset(now: ContinuousClock.Instant) {
        _ = ledger.reset()
        inFlight.removeAll()
        writing.removeAll()
        unconfirmed = 0
        windowProgress = now
        earliestDeadline = nil
        current = nil
        turnWritten = 0
        roundWritten = 0
        writeTimes.removeAll()
        nacksInARow = 0
    }
}
