/// Publisher-confirm bookkeeping for one channel: which caller owns which delivery tag.
///
/// Delivery tags count from 1 per channel and every publish takes the next one. `basic.ack` and
/// `basic.nack` settle one tag, or with `multiple` every outstanding tag up to and including it.
/// Pure value type; owned by the connection's owner thread.
struct ConfirmLedger<Owner> {
    private var owners: [UInt64: Owner] = [:]
    private var lowestOutstanding: UInt64 = 1
    private(set) var nextTag: UInt64 = 1

    var isEmpty: Bool { owners.isEmpty }
    var count: Int { owners.count }

    /// Records a publish; returns its delivery tag.
    @discardableResult
    mutating func register(_ owner: Owner) -> UInt64 {
        defer { nextTag += 1 }
        owners[nextTag] = owner
        return nextTag
    }

    /// Removes and returns the owners settled by a confirm for `tag`, in tag order.
    /// Unknown or already settled tags are ignored.
    mutating func settle(upTo tag: UInt64, multiple: Bool) -> [Owner] {
        var settled: [Owner] = []
        if multiple {
            var current = lowestOutstanding
            while current <= tag, current < nextTag {
                if let owner = owners.removeValue(forKey: current) { settled.append(owner) }
                current += 1
            }
        } else if let owner = owners.removeValue(forKey: tag) {
            settled.append(owner)
        }
        while lowestOutstanding < nextTag, owners[lowestOutstanding] == nil { lowestOutstanding += 1 }
        return settled
    }

    /// Forgets everything and restarts at tag 1 (a new channel). Returns the owners that were outstanding.
    mutating func reset() -> [Owner] {
        let outstanding = owners.sorted { $0.key < $1.key }.map(\.value)
        owners.removeAll()
        lowestOutstanding = 1
        nextTag = 1
        return outstanding
    }
}
