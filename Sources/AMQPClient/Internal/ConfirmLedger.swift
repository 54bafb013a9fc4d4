import DequeModule

/// Publisher-confirm bookkeeping for one channel: which caller owns which delivery tag.
///
/// Delivery tags count from 1 per channel and every publish takes the next one. `basic.ack` and
/// `basic.nack` settle one tag, or with `multiple` every outstanding tag up to and including it.
/// Tags are consecutive, so the owners live in a ring indexed by `tag - lowestOutstanding`: no
/// hashing, and settling from the front (the common case) is O(1) per tag.
/// Pure value type; owned by the connection's owner thread.
struct ConfirmLedger<Owner> {
    /// Owner of tag `lowestOutstanding + i` at index `i`; `nil` once settled out of order.
    private var owners: Deque<Owner?> = []
    private var lowestOutstanding: UInt64 = 1
    private(set) var count = 0

    var isEmpty: Bool { count == 0 }
    /// The lowest tag not yet settled, if any.
    var oldestOutstanding: UInt64? { count > 0 ? lowestOutstanding : nil }
    /// The tag the next publish gets.
    var nextTag: UInt64 { lowestOutstanding + UInt64(owners.count) }

    /// Records a publish; returns its delivery tag.
    @discardableResult
    mutating func register(_ owner: Owner) -> UInt64 {
        let tag = nextTag
        owners.append(owner)
        count += 1
        return tag
    }

    /// Removes and returns the owners settled by a confirm for `tag`, in tag order.
    /// Unknown or already settled tags are ignored.
    mutating func settle(upTo tag: UInt64, multiple: Bool) -> [Owner] {
        var settled: [Owner] = []
        settle(upTo: tag, multiple: multiple) { settled.append($0) }
        return settled
    }

    /// Like ``settle(upTo:multiple:)``, handing each settled owner to `body` without building an array.
    mutating func settle(upTo tag: UInt64, multiple: Bool, _ body: (Owner) -> Void) {
        guard tag >= lowestOutstanding else { return }
        if multiple {
            while let first = owners.first, lowestOutstanding <= tag {
                owners.removeFirst()
                lowestOutstanding += 1
                if let first {
                    count -= 1
                    body(first)
                }
            }
        } else if tag < nextTag {
            let index = owners.index(owners.startIndex, offsetBy: Int(tag - lowestOutstanding))
            if let owner = owners[index] {
                owners[index] = nil
                count -= 1
                body(owner)
            }
        }
        while let first = owners.first, first == nil {
            owners.removeFirst()
            lowestOutstanding += 1
        }
    }

    /// Forgets everything and restarts at tag 1 (a new channel). Returns the owners that were outstanding.
    mutating func reset() -> [Owner] {
        let outstanding = owners.compactMap { $0 }
        owners.removeAll()
        lowestOutstanding = 1
        count = 0
        return outstanding
    }
}
