import DurationUnits
import Testing

@Suite struct DurationUnitsTests {
    @Test func ordinaryDurationsConvertExactlyAndRoundTowardZero() {
        let duration = Duration.seconds(2) + .nanoseconds(345_678_901)
        #expect(duration.clampedNanoseconds == 2_345_678_901)
        #expect(duration.clampedMicroseconds == 2_345_678)
        #expect(duration.clampedMilliseconds == 2_345)
        #expect(duration.clampedSeconds == 2)
        #expect(abs(duration.secondsValue - 2.345678901) < 1e-12)
        #expect(Duration.nanoseconds(999_999).clampedMilliseconds == 0)
        #expect(Duration.zero.clampedNanoseconds == 0)
    }

    @Test func negativeDurationsRoundTowardZero() {
        let duration = Duration.zero - .milliseconds(1_500) - .nanoseconds(7)
        #expect(duration.clampedMilliseconds == -1_500)
        #expect(duration.clampedNanoseconds == -1_500_000_007)
        #expect(duration.clampedSeconds == -1)
        #expect((Duration.zero - .nanoseconds(999_999)).clampedMilliseconds == 0)
    }

    @Test func durationsBeyondTheRangeSaturateInsteadOfTrapping() {
        let huge = Duration.seconds(Int64.max)
        #expect(huge.clampedNanoseconds == .max)
        #expect(huge.clampedMilliseconds == .max)
        #expect(huge.clampedSeconds == .max)
        let hugeNegative = Duration.seconds(Int64.min)
        #expect(hugeNegative.clampedNanoseconds == .min)
        #expect(hugeNegative.clampedMilliseconds == .min)
        // Just past Int64.max nanoseconds, either way.
        let edge = Duration.seconds(Int64.max / 1_000_000_000) + .milliseconds(999)
        #expect(edge.clampedNanoseconds == .max)
        #expect((Duration.zero - edge).clampedNanoseconds == .min)
        #expect(Duration.seconds(Int64.max / 1_000_000_000).clampedNanoseconds == Int64.max / 1_000_000_000 * 1_000_000_000)
        // Beyond 2^63 seconds, where `Duration.components` itself traps.
        let beyond = Duration(attoseconds: .max)
        #expect(beyond.clampedSeconds == .max)
        #expect(beyond.clampedMilliseconds == .max)
        #expect(beyond.clampedMicroseconds == .max)
        #expect(Duration(attoseconds: .min).clampedSeconds == .min)
        #expect(beyond.secondsValue > 1e20)
    }
}
