/// `Duration` in whole units, saturating instead of trapping.
///
/// A duration can come from configuration (a timeout, a retry delay, a dedup window), and one of
/// `.seconds(Int64.max)` must not take the process down where it is turned into the milliseconds a
/// `poll(2)` takes or the nanoseconds a metric records: `seconds * 1000` traps on overflow. Each
/// conversion rounds toward zero and saturates at `Int64.min` or `Int64.max`.
extension Duration {
    /// Whole nanoseconds.
    public var clampedNanoseconds: Int64 { clamped(unitsPerSecond: 1_000_000_000) }

    /// Whole microseconds.
    public var clampedMicroseconds: Int64 { clamped(unitsPerSecond: 1_000_000) }

    /// Whole milliseconds.
    public var clampedMilliseconds: Int64 { clamped(unitsPerSecond: 1000) }

    /// Seconds as a floating-point value (for log lines and APIs that take a time interval).
    public var secondsValue: Double {
        let (seconds, attoseconds) = components
        return Double(seconds) + Double(attoseconds) / 1e18
    }

    private func clamped(unitsPerSecond: Int64) -> Int64 {
        // `components` gives both parts the duration's sign.
        let (seconds, attoseconds) = components
        let (whole, overflow) = seconds.multipliedReportingOverflow(by: unitsPerSecond)
        if overflow { return seconds < 0 ? .min : .max }
        let (sum, carry) = whole.addingReportingOverflow(attoseconds / (1_000_000_000_000_000_000 / unitsPerSecond))
        if carry { return attoseconds < 0 ? .min : .max }
        return sum
    }
}
