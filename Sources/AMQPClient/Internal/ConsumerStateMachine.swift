import DequeModule

/// A caller waiting for the outcome of one settle call (ack, nack, republish-then-ack).
protocol SettleWaiter: AnyObject {
    /// Answers the caller; later answers are ignored.
    func answer(_ result: Result<Void, AMQPError>)
}

/// The consumer's bookkeeping for one connection, without the connection: which deliveries are
/// handed out and unsettled, which settle calls are valid, which republished copies wait for their
/// confirm (and until when), which wait for the broker to unblock, and when shutdown is done.
///
/// The owner thread feeds it what happened and performs the writes it asks for (``Write``);
/// answers go straight to the waiters. No system calls, no clock of its own: unit-tested without a
/// broker.
struct ConsumerStateMachine<Waiter: SettleWaiter> {
    /// A settle call as queued by a caller.
    struct Command {
        enum Settlement {
            case ack
            case nack(requeue: Bool)
            case republishThenAck(AMQPOutboundMessage)
        }

        var settlement: Settlement
        var deliveryTag: UInt64
        /// The connection the delivery came on (see ``ConsumerStateMachine/generation``).
        var generation: UInt64
        var waiter: Waiter
        /// Set once a republish has been held while the broker blocked publishing: held again (the
        /// block came back), it keeps this first deadline, so a flapping block cannot extend it.
        var heldUntil: ContinuousClock.Instant? = nil
    }

    /// What the owner thread must write for a command; answer the waiter with ``wrote(_:)`` once
    /// written, or with the write's error (the connection is then gone).
    enum Write {
        case ack(deliveryTag: UInt64)
        case nack(deliveryTag: UInt64, requeue: Bool)
        case publish(AMQPOutboundMessage)
    }

    let confirmTimeout: Duration
    let shutdownTimeout: Duration
    /// Counts connections; a delivery's settle call is valid only on the connection it came on.
    private(set) var generation: UInt64 = 0
    /// Deliveries handed out on this connection and not yet settled.
    private(set) var unsettled: Set<UInt64> = []
    /// Republished copies waiting for their confirm: publish tag -> (delivery to ack, caller).
    private var pendingRepublish = ConfirmLedger<(deliveryTag: UInt64, waiter: Waiter, key: String)>()
    /// Republished copies the broker returned as unroutable (`basic.return`, which comes before the
    /// copy's confirm), by ``returnKey(routingKey:messageID:)``, until that confirm.
    private var returned: [String: Int] = [:]
    private var republishDeadlines: [(tag: UInt64, deadline: ContinuousClock.Instant)] = []
    /// Republishes taken while the broker blocks publishing, with their deadlines.
    private var held: Deque<(command: Command, deadline: ContinuousClock.Instant)> = []
    /// The broker sent `connection.blocked` on this connection and no `connection.unblocked` yet.
    private(set) var isBlocked = false
    /// Shutdown began: the subscription is cancelled and no delivery is handed out any more.
    private(set) var isCancelled = false
    private var stopDeadline: ContinuousClock.Instant?

    init(confirmTimeout: Duration, shutdownTimeout: Duration) {
        self.confirmTimeout = confirmTimeout
        self.shutdownTimeout = shutdownTimeout
    }

    // MARK: Connection

    /// A new connection: deliveries of the last one are void (the broker redelivers them).
    mutating func connected() {
        generation += 1
        unsettled.removeAll()
        isBlocked = false
    }

    /// The connection broke, or the consumer stops: every caller still waiting gets `error`.
    mutating func failOutstanding(_ error: AMQPError) {
        for pending in pendingRepublish.reset() { pending.waiter.answer(.failure(error)) }
        returned.removeAll()
        for entry in held { entry.command.waiter.answer(.failure(error)) }
        held.removeAll()
        republishDeadlines.removeAll()
        unsettled.removeAll()
        isBlocked = false
    }

    // MARK: Deliveries

    /// A delivery arrived: `true` when it is to be handed out (not after shutdown began; the
    /// broker requeues it when the connection closes).
    mutating func delivered(deliveryTag: UInt64) -> Bool {
        guard !isCancelled else { return false }
        unsettled.insert(deliveryTag)
        return true
    }

    /// A settle call: what to write for it, or `nil` when it needs no write now (answered at once:
    /// wrong connection, already settled, unencodable; or held while the broker blocks publishing).
    mutating func take(_ command: Command, frameSize: Int, now: ContinuousClock.Instant) -> Write? {
        guard command.generation == generation, unsettled.contains(command.deliveryTag) else {
            command.waiter.answer(
                .failure(AMQPError(.connectionLost, "delivery belongs to a broken connection or was already settled; it will be redelivered")))
            return nil
        }
        switch command.settlement {
        case .ack:
            unsettled.remove(command.deliveryTag)
            return .ack(deliveryTag: command.deliveryTag)
        case .nack(let requeue):
            unsettled.remove(command.deliveryTag)
            return .nack(deliveryTag: command.deliveryTag, requeue: requeue)
        case .republishThenAck(let message):
            if let problem = message.encodingProblem(frameSize: frameSize) {
                command.waiter.answer(.failure(AMQPError(.unencodable, problem)))
                return nil
            }
            if let stopDeadline, now >= stopDeadline {
                // Only a republish already under way is let finish after the deadline: a new one
                // would extend shutdown again (the delivery stays unsettled and is redelivered).
                command.waiter.answer(
                    .failure(AMQPError(.shutdown, "shutdown deadline passed; nothing was republished; the message will be redelivered")))
                return nil
            }
            if isBlocked {
                let deadline = command.heldUntil ?? now.advanced(by: confirmTimeout)
                guard deadline > now else {
                    command.waiter.answer(
                        .failure(AMQPError(.blocked, "broker kept publishing blocked for \(confirmTimeout); nothing was republished")))
                    return nil
                }
                held.append((command, deadline))
                return nil
            }
            return .publish(message)
        }
    }

    /// The write ``take(_:frameSize:now:)`` asked for is done: an ack or nack is answered; a
    /// republished copy now waits for its confirm (for `confirmTimeout`).
    mutating func wrote(_ command: Command, now: ContinuousClock.Instant) {
        switch command.settlement {
        case .ack, .nack:
            command.waiter.answer(.success(()))
        case .republishThenAck(let message):
            let key = Self.returnKey(routingKey: message.routingKey, messageID: message.properties.messageID)
            let tag = pendingRepublish.register((command.deliveryTag, command.waiter, key))
            republishDeadlines.append((tag, now.advanced(by: confirmTimeout)))
        }
    }

    /// A confirm for republished copies. On `success` it returns the originals to acknowledge now,
    /// in order (answer each waiter once its ack is written); on a nack their callers fail with
    /// `.nacked` and the originals stay unacknowledged.
    mutating func confirmed(upTo tag: UInt64, multiple: Bool, success: Bool) -> [(deliveryTag: UInt64, waiter: Waiter)] {
        let settled = pendingRepublish.settle(upTo: tag, multiple: multiple)
        guard success else {
            for pending in settled { pending.waiter.answer(.failure(AMQPError(.nacked, "broker rejected the republished message"))) }
            return []
        }
        var acknowledge: [(deliveryTag: UInt64, waiter: Waiter)] = []
        for pending in settled {
            // Confirmed, but it reached no queue (e.g. a wait queue someone deleted): the original
            // stays unacknowledged, so the event is not lost.
            if let count = returned[pending.key], count > 0 {
                returned[pending.key] = count > 1 ? count - 1 : nil
                pending.waiter.answer(
                    .failure(AMQPError(.nacked, "the republished message reached no queue (unroutable)", replyCode: AMQPError.noRoute)))
                continue
            }
            // Only originals still unsettled: a caller whose backstop gave up may have settled the
            // delivery otherwise since (an ack of a settled tag would make the broker close the channel).
            if unsettled.remove(pending.deliveryTag) != nil { acknowledge.append((pending.deliveryTag, pending.waiter)) }
        }
        return acknowledge
    }

    /// `basic.return` of a republished copy (published `mandatory`): its confirm, which follows,
    /// fails its caller instead of acknowledging the original.
    mutating func returnedRepublish(routingKey: String, messageID: String?) {
        returned[Self.returnKey(routingKey: routingKey, messageID: messageID), default: 0] += 1
    }

    static func returnKey(routingKey: String, messageID: String?) -> String { routingKey + "\u{0}" + (messageID ?? "") }

    /// `connection.blocked` / `connection.unblocked`. Unblocking returns the held republishes, to
    /// be taken again first.
    mutating func setBlocked(_ blocked: Bool) -> [Command] {
        isBlocked = blocked
        guard !blocked, !held.isEmpty else { return [] }
        defer { held.removeAll() }
        return held.map { entry in
            var command = entry.command
            command.heldUntil = entry.deadline
            return command
        }
    }

    // MARK: Time and shutdown

    /// Shutdown was requested: `true` the first time (cancel the subscription and finish the
    /// deliveries sequence then). Unsettled deliveries get `shutdownTimeout`; a republish already
    /// under way at that deadline may finish within `confirmTimeout` more, and none is taken after
    /// it. So shutdown takes at most `shutdownTimeout + confirmTimeout`.
    mutating func requestStop(now: ContinuousClock.Instant) -> Bool {
        guard !isCancelled else { return false }
        isCancelled = true
        stopDeadline = now.advanced(by: shutdownTimeout)
        return true
    }

    enum TickOutcome: Equatable {
        /// Wait for the socket or a wake-up, at most this long.
        case wait(Duration)
        /// Shutdown is complete, or its deadline passed with deliveries unsettled (`unsettled`
        /// of them: the broker requeues them when the connection closes).
        case stopped(unsettled: Int)
    }

    /// Fails republishes past their deadline and says whether to stop or how long to wait.
    mutating func tick(now: ContinuousClock.Instant) -> TickOutcome {
        while let first = held.first, first.deadline <= now {
            held.removeFirst()
            first.command.waiter.answer(
                .failure(AMQPError(.blocked, "broker kept publishing blocked for \(confirmTimeout); nothing was republished")))
        }
        var expired: [UInt64] = []
        republishDeadlines.removeAll { entry in
            guard entry.deadline <= now else { return false }
            expired.append(entry.tag)
            return true
        }
        for tag in expired {
            for pending in pendingRepublish.settle(upTo: tag, multiple: false) {
                pending.waiter.answer(.failure(AMQPError(.confirmTimeout, "no confirm for the republished message within \(confirmTimeout)")))
            }
        }
        if pendingRepublish.isEmpty { republishDeadlines.removeAll() }
        if isCancelled {
            if unsettled.isEmpty && pendingRepublish.isEmpty && held.isEmpty { return .stopped(unsettled: 0) }
            // A settle already under way (a copy written and awaiting its confirm, or held while the
            // broker blocks) is let finish, for at most `confirmTimeout` more: cutting it would leave
            // the copy published and the original redelivered, a duplicate for nothing.
            if let stopDeadline, now >= stopDeadline {
                if pendingRepublish.isEmpty && held.isEmpty { return .stopped(unsettled: unsettled.count) }
                if now >= stopDeadline.advanced(by: confirmTimeout) { return .stopped(unsettled: unsettled.count) }
            }
        }
        var earliest = held.first?.deadline
        if let soonest = republishDeadlines.map(\.deadline).min() { earliest = min(earliest ?? soonest, soonest) }
        if let stopDeadline {
            // Whichever limit of shutdown is still ahead (one already past would make a zero wait: a spin).
            let limit = stopDeadline > now ? stopDeadline : stopDeadline.advanced(by: confirmTimeout)
            if limit > now { earliest = min(earliest ?? limit, limit) }
        }
        var timeout = Duration.seconds(1)
        if let earliest { timeout = min(timeout, earliest - now) }
        return .wait(max(timeout, .zero))
    }

    /// Nothing in flight: no unsettled delivery, no copy waiting for a confirm, nothing held.
    var isIdle: Bool { unsettled.isEmpty && pendingRepublish.isEmpty && held.isEmpty }
}

extension ConsumerStateMachine.Command: Sendable where Waiter: Sendable {}
extension ConsumerStateMachine.Command.Settlement: Sendable where Waiter: Sendable {}
