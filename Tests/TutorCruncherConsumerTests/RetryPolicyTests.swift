import Testing

@testable import TutorCruncherConsumer

/// The retry schedule, without a broker.
@Suite struct RetryPolicyTests {
    typealias Policy = TutorCruncherConsumerConfiguration.RetryPolicy

    @Test func waitsGrowByTheMultiplierUpToTheCap() {
        let policy = Policy(maxAttempts: 6, initialDelay: .seconds(5), multiplier: 2, maxDelay: .seconds(30), jitter: 0)
        #expect((1...6).map(policy.delay(afterAttempt:)) == [.seconds(5), .seconds(10), .seconds(20), .seconds(30), .seconds(30), .seconds(30)])
        // One wait queue per distinct wait, the cap included (for retry(after:)).
        #expect(policy.waitTiers == [.seconds(5), .seconds(10), .seconds(20), .seconds(30)])
    }

    @Test func anAttemptCountFromAHostileHeaderCannotOverflowOrSpin() {
        let policy = Policy(initialDelay: .seconds(5), multiplier: 1, maxDelay: .seconds(300))
        #expect(policy.delay(afterAttempt: .max) == .seconds(5))
        let growing = Policy(initialDelay: .seconds(5), multiplier: 10, maxDelay: .seconds(300))
        #expect(growing.delay(afterAttempt: .max) == .seconds(300))
        #expect(growing.delay(afterAttempt: .min) == .seconds(5))
    }

    @Test func anyMaxAttemptsGivesAFewWaitQueues() {
        #expect(Policy(maxAttempts: .max, initialDelay: .seconds(5), multiplier: 2, maxDelay: .seconds(300)).waitTiers.count == 7, "5, 10, 20, 40, 80, 160 and 300 s")
        #expect(Policy(maxAttempts: .max, initialDelay: .seconds(5), multiplier: 1, maxDelay: .seconds(300)).waitTiers == [.seconds(5), .seconds(300)])
        #expect(Policy(maxAttempts: .max, initialDelay: .seconds(5), multiplier: 1.0001, maxDelay: .seconds(300)).waitTiers.count <= 32)
    }

    @Test func jitterOnlyEverShortensAWaitByUpToItsFraction() {
        let policy = Policy(initialDelay: .seconds(10), jitter: 0.2)
        for _ in 0..<1000 {
            let wait = policy.jittered(.seconds(10))
            #expect(wait <= .seconds(10) && wait >= .seconds(8))
        }
        #expect(Policy(jitter: 0).jittered(.seconds(10)) == .seconds(10))
    }

    @Test func noInitialDelayMeansNoWaitQueues() {
        let policy = Policy(maxAttempts: 3, initialDelay: .zero)
        #expect(policy.waitTiers.isEmpty)
        #expect(policy.delay(afterAttempt: 2) == .zero)
        #expect(Policy(maxAttempts: 1).waitTiers.isEmpty, "one attempt: nothing ever waits")
    }

    @Test func waitQueuesAreNamedAfterTheirWaitInMilliseconds() {
        let configuration = TutorCruncherConsumerConfiguration(queue: "billing")
        #expect(configuration.waitQueue(for: .milliseconds(1500)) == "billing.retry.1500ms")
    }
}
