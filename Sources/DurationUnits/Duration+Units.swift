/// `Duration` in whole units, saturating instead of trapping.
///
/// A duration can come from configuration (a timeout, a retry delay, a dedup window), and one of
/// `.seconds(Int64.max)` must not take the process down where it is turned into the milliseconds a
/// `poll(2)` takes or the nanoseconds a metric records: `seconds * 1000` traps on overflow, and so
/// does `Duration.components` beyond 2^63 seconds. These work on the duration's 128-bit count of
/// attoseconds: each rounds toward zero and saturates at `Int64.min` or `Int64.max`, for every
/// `Duration`. Package-internal: not part of the libraries' API.
extension Duration {
    /// Whole nanoseconds.
    package var clampedNanoseconds: Int64 { Int64(clamping: attoseconds / 1_000_000_000) }

    /// Whole microseconds.
    package var clampedMicroseconds: Int64 { Int64(clamping: attoseconds / 1_000_000_000_000) }

    /// Whole milliseconds.
    package var clampedMilliseconds: Int64 { Int64(clamping: attoseconds / 1_000_000_000_000_000) }

    /// Whole seconds.
    package var clampedSeconds: Int64 { Int64(clamping: attoseconds / 1_000_000_000_000_000_000) }

    /// Seconds as a floating-point value (for log lines and APIs that take a time interval).
    package var secondsValue: Double { Double(attoseconds) / 1e18 }
}
