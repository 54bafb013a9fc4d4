import DequeModule

/// The dedup window's memory: body digests with the time each was accepted, oldest first, at most
/// `maxEntries` of them, in about 50 bytes each.
///
/// Entries live once, in insertion order, in a deque (40 bytes each). An open-addressing index of
/// 8-byte slots (linear probing, at most half full, backward-shift deletion) finds an entry by its
/// digest: each slot holds the entry's sequence number (its place in the deque) and the top 32 bits
/// of the digest's per-process seeded hash, so a probe compares full digests only on a tag match.
/// A `[BodyDigest: Int64]` beside a `Deque<DedupEntry>` held every digest twice and, at 100,000
/// entries, a dictionary of 262,144 buckets: about 16 MB instead of about 6.
///
/// At most `maxEntries` digests are remembered: remembering another evicts the oldest. A digest
/// inserted again (the window itself never does that: it claims first) leaves its earlier entry in
/// the deque as stale, pointed to by no slot; stale entries never count against `maxEntries`, and
/// the deque is kept under `2 * maxEntries` by dropping the oldest entries when it would exceed it.
///
/// A value type without locks; ``DedupMemory`` keeps it behind its mutex. Never traps on its input
/// on a 64-bit platform: counts are bounded by `maxEntries`, which is clamped to
/// ``limitRange`` (1...2^30), so the deque stays under 2^31 entries and the index under 2^31 slots.
struct DedupTable {
    /// What `maxEntries` is clamped to.
    static let limitRange = 1...(1 << 30)

    /// Most digests remembered; remembering another evicts the oldest.
    let maxEntries: Int
    /// Inserted entries, oldest first. Entry `i` has sequence number `firstSequence + i`. An entry
    /// whose digest was inserted again later is stale: no slot points to it.
    private var entries: Deque<DedupEntry> = []
    /// Sequence number of `entries.first`, modulo 2^32 (the deque never holds 2^32 entries).
    private var firstSequence: UInt32
    /// `0`: empty; else `sequence << 32 | tag`, where `tag` is the top 32 bits of the digest's hash
    /// with its lowest bit set (so no occupied slot is 0). Slots are only allocated on first insert.
    private var slots: [UInt64]
    /// log2 of `slots.count`; an entry's home slot is the top `bits` bits of its tag.
    private var bits: Int
    /// Entries with a slot (not stale).
    private(set) var count = 0
    /// The digest's hash: Swift's per-process seeded one, so nobody can aim digests at one slot.
    private let hash: @Sendable (BodyDigest) -> UInt

    private static let minimumBits = 10

    /// `firstSequence` lets tests start near the wrap of the 32-bit sequence numbers, and `hash`
    /// lets them force equal home slots and tags.
    init(maxEntries: Int, firstSequence: UInt32 = 0, hash: @escaping @Sendable (BodyDigest) -> UInt = { UInt(bitPattern: $0.hashValue) }) {
        self.maxEntries = min(max(maxEntries, Self.limitRange.lowerBound), Self.limitRange.upperBound)
        self.firstSequence = firstSequence
        self.bits = Self.minimumBits
        self.slots = []
        self.hash = hash
    }

    /// When `digest` was accepted, if it is remembered.
    func acceptedAt(_ digest: BodyDigest) -> Int64? {
        guard let found = find(digest, tag: tag(of: digest)) else { return nil }
        return entries[found.position].at
    }

    func contains(_ digest: BodyDigest) -> Bool { acceptedAt(digest) != nil }

    /// Remembers `entry` (an earlier entry with the same digest becomes stale), first evicting the
    /// oldest remembered digests while ``maxEntries`` are held. Returns how many remembered
    /// (non-stale) entries were evicted to make room.
    @discardableResult
    mutating func insert(_ entry: DedupEntry) -> Int {
        var evicted = 0
        // Stale entries are bounded too; dropping one never forgets a remembered digest, but if
        // the oldest entry is live it goes (and counts as evicted).
        while entries.count >= 2 * maxEntries {
            if popOldest() { evicted += 1 }
        }
        if slots.isEmpty { slots = Array(repeating: 0, count: 1 << bits) }
        let tag = tag(of: entry.digest)
        if let found = find(entry.digest, tag: tag) {
            slots[found.slot] = Self.slot(sequence: nextSequence, tag: tag)
            entries.append(entry)
            return evicted
        }
        while count >= maxEntries {
            if popOldest() { evicted += 1 }
        }
        if (count + 1) * 2 > slots.count { grow() }
        var index = homeSlot(tag)
        while slots[index] != 0 { index = (index + 1) & mask }
        slots[index] = Self.slot(sequence: nextSequence, tag: tag)
        entries.append(entry)
        count += 1
        return evicted
    }

    /// Forgets every entry accepted at or before `cutoff` (wall-clock ms).
    mutating func expire(through cutoff: Int64) {
        while let oldest = entries.first, oldest.at <= cutoff { popOldest() }
    }

    /// The remembered entries, oldest first.
    func liveEntries() -> [DedupEntry] {
        var live: [DedupEntry] = []
        live.reserveCapacity(count)
        for (offset, entry) in entries.enumerated() {
            let sequence = firstSequence &+ UInt32(truncatingIfNeeded: offset)
            if let found = find(entry.digest, tag: tag(of: entry.digest)), Self.sequence(in: slots[found.slot]) == sequence {
                live.append(entry)
            }
        }
        return live
    }

    // MARK: - Internals

    private var mask: Int { slots.count - 1 }

    /// The sequence number the next appended entry gets.
    private var nextSequence: UInt32 { firstSequence &+ UInt32(truncatingIfNeeded: entries.count) }

    /// The top 32 bits of the hash, lowest bit set.
    private func tag(of digest: BodyDigest) -> UInt32 {
        UInt32(truncatingIfNeeded: hash(digest) >> UInt(UInt.bitWidth - 32)) | 1
    }

    private static func slot(sequence: UInt32, tag: UInt32) -> UInt64 { UInt64(sequence) << 32 | UInt64(tag) }
    private static func sequence(in slot: UInt64) -> UInt32 { UInt32(truncatingIfNeeded: slot >> 32) }
    private static func tag(in slot: UInt64) -> UInt32 { UInt32(truncatingIfNeeded: slot) }

    private func homeSlot(_ tag: UInt32) -> Int { Int(tag >> UInt32(32 - bits)) }

    private func position(of slot: UInt64) -> Int { Int(Self.sequence(in: slot) &- firstSequence) }

    private func find(_ digest: BodyDigest, tag: UInt32) -> (slot: Int, position: Int)? {
        guard !slots.isEmpty else { return nil }
        var index = homeSlot(tag)
        while true {
            let slot = slots[index]
            if slot == 0 { return nil }
            if Self.tag(in: slot) == tag {
                let entryPosition = position(of: slot)
                if entries[entryPosition].digest == digest { return (index, entryPosition) }
            }
            index = (index + 1) & mask
        }
    }

    /// Removes the oldest entry (and its slot, unless it is stale). Returns whether it had a slot.
    @discardableResult
    private mutating func popOldest() -> Bool {
        guard let oldest = entries.first else { return false }
        let live: Bool
        if let found = find(oldest.digest, tag: tag(of: oldest.digest)), found.position == 0 {
            removeSlot(found.slot)
            count -= 1
            live = true
        } else {
            live = false
        }
        entries.removeFirst()
        firstSequence &+= 1
        return live
    }

    /// Empties `index` and shifts later entries of its probe run back, so every entry stays
    /// reachable from its home slot without tombstones.
    private mutating func removeSlot(_ index: Int) {
        var hole = index
        var next = index
        while true {
            next = (next + 1) & mask
            let slot = slots[next]
            if slot == 0 { break }
            let home = homeSlot(Self.tag(in: slot))
            // The entry at `next` may fill the hole unless its home lies cyclically in (hole, next].
            let distanceToHome = (next - home) & mask
            let distanceToHole = (next - hole) & mask
            if distanceToHome >= distanceToHole {
                slots[hole] = slot
                hole = next
            }
        }
        slots[hole] = 0
    }

    private mutating func grow() {
        let old = slots
        bits += 1
        slots = Array(repeating: 0, count: 1 << bits)
        for slot in old where slot != 0 {
            var index = homeSlot(Self.tag(in: slot))
            while slots[index] != 0 { index = (index + 1) & mask }
            slots[index] = slot
        }
    }
}
