@testable import AMQPClient
import Testing

@Suite struct ConfirmLedgerTests {
    @Test func tagsCountFromOne() {
        var ledger = ConfirmLedger<String>()
        #expect(ledger.register("a") == 1)
        #expect(ledger.register("b") == 2)
    }

    @Test func singleAckSettlesOnlyThatTag() {
        var ledger = ConfirmLedger<String>()
        for owner in ["a", "b", "c"] { ledger.register(owner) }
        #expect(ledger.settle(upTo: 2, multiple: false) == ["b"])
        #expect(ledger.count == 2)
        #expect(ledger.settle(upTo: 2, multiple: false).isEmpty)  // already settled
    }

    @Test func multipleSettlesEverythingUpToTheTagInOrder() {
        var ledger = ConfirmLedger<String>()
        for owner in ["a", "b", "c", "d", "e"] { ledger.register(owner) }
        #expect(ledger.settle(upTo: 2, multiple: false) == ["b"])
        #expect(ledger.settle(upTo: 4, multiple: true) == ["a", "c", "d"])
        #expect(ledger.settle(upTo: 5, multiple: true) == ["e"])
        #expect(ledger.isEmpty)
    }

    @Test func multipleBeyondTheLastTagStopsAtIt() {
        var ledger = ConfirmLedger<Int>()
        ledger.register(1)
        #expect(ledger.settle(upTo: 1_000_000, multiple: true) == [1])
        #expect(ledger.register(2) == 2)
        #expect(ledger.settle(upTo: 2, multiple: true) == [2])
    }

    @Test func resetReturnsOutstandingAndRestartsAtOne() {
        var ledger = ConfirmLedger<String>()
        for owner in ["a", "b", "c"] { ledger.register(owner) }
        _ = ledger.settle(upTo: 1, multiple: false)
        #expect(ledger.reset() == ["b", "c"])
        #expect(ledger.register("x") == 1)
    }
}
