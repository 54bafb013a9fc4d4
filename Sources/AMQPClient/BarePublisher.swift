#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

/// The yardstick for benchmarks: publishing straight on one rabbitmq-c connection, with nothing of
/// ``AMQPPublisher`` around it (no owner thread hand-off, no tasks, no deadlines). It keeps up to
/// `inFlight` messages unconfirmed and reads confirms as they come, which is as fast as this machine's
/// broker takes persistent confirmed messages through rabbitmq-c.
///
/// Threading: blocks the calling thread for the whole run; call it from a thread of its own.
/// Errors: ``AMQPError`` from the connection; a nack counts as an error (the broker refused a message).
@_spi(Benchmarks)
public enum BarePublisher {
    public struct Outcome: Sendable {
        /// Messages the broker confirmed.
        public var confirmed: Int
        /// Wall-clock time from the first publish to the last confirm.
        public var elapsed: Duration
        /// Each message's time from its publish to its confirm, in publish order.
        public var latencies: [Duration]
    }

    /// Publishes `count` messages made by `message(index)` with at most `inFlight` unconfirmed at once.
    /// `pause`: how long the thread sleeps before each publish (the broker idles meanwhile, as it
    /// does while a receiver handles its next request). Meant for `inFlight` 1, where no confirm can
    /// arrive during a pause and the latencies leave the pauses out (`elapsed` includes them).
    public static func run(
        connection configuration: AMQPConnectionConfiguration, count: Int, inFlight: Int, pause: Duration = .zero,
        message: (Int) -> AMQPOutboundMessage
    ) throws(AMQPError) -> Outcome {
        precondition(inFlight >= 1, "inFlight must be at least 1")
        precondition(pause == .zero || inFlight == 1, "a pause is for one message in flight")
        let connection = try AMQPConnection(configuration: configuration)
        defer { connection.close() }
        try connection.enablePublisherConfirms()
        let clock = ContinuousClock()
        let started = clock.now
        var published = 0
        var confirmed = 0
        var isConfirmed = [Bool](repeating: false, count: count)
        var sentAt = [ContinuousClock.Instant](repeating: started, count: count)
        var latencies = [Duration](repeating: .zero, count: count)
        var lowestUnconfirmed = 1
        while confirmed < count {
            while published < count, published - confirmed < inFlight {
                if pause > .zero {
                    var interval = timespec(
                        tv_sec: Int(pause.components.seconds), tv_nsec: Int(pause.components.attoseconds / 1_000_000_000))
                    var remaining = timespec()
                    while nanosleep(&interval, &remaining) != 0, errno == EINTR { interval = remaining }
                }
                try connection.publish(message(published))
                sentAt[published] = clock.now
                published += 1
            }
            guard let event = try connection.nextEvent(timeout: .seconds(30)) else {
                throw AMQPError(.confirmTimeout, "no confirm within 30 s (\(confirmed) of \(count) confirmed)")
            }
            switch event {
            case .ack(let tag, let multiple):
                // Delivery tags count publishes from 1 on this channel; confirms may come out of order.
                let upTo = min(Int(clamping: tag), published)
                guard upTo >= 1 else { continue }
                let first = multiple ? lowestUnconfirmed : upTo
                if first <= upTo {
                    let now = clock.now
                    for index in first...upTo where !isConfirmed[index - 1] {
                        isConfirmed[index - 1] = true
                        latencies[index - 1] = now - sentAt[index - 1]
                        confirmed += 1
                    }
                }
                while lowestUnconfirmed <= published, isConfirmed[lowestUnconfirmed - 1] { lowestUnconfirmed += 1 }
            case .nack(let tag, _):
                throw AMQPError(.nacked, "broker nacked message \(tag)")
            default:
                continue
            }
        }
        return Outcome(confirmed: confirmed, elapsed: clock.now - started, latencies: latencies)
    }
}

/// The owner thread's encoding of messages into frames (``PublishFrames``), for `tc-bench stages`:
/// one encoder, its storage kept from message to message as the owner keeps it from round to round.
/// Not thread-safe.
@_spi(Benchmarks)
public final class PublishFramesBenchmark {
    private var frames = PublishFrames()

    public init() {}

    /// Encodes `message` as a round of one (frame size 131,072, channel 1); returns the bytes
    /// encoded, or `nil` when it cannot be encoded.
    public func encode(_ message: AMQPOutboundMessage) -> Int? {
        frames.removeAll()
        do {
            try frames.append(message, channel: 1, frameSize: 131_072)
        } catch {
            return nil
        }
        return frames.bytes.count
    }
}
