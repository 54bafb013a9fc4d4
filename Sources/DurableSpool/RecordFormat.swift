/// On-disk framing of one record:
///
///     magic (8 bytes: FF 54 43 53 50 4F 4F 4C, "\xFFTCSPOOL") | length (UInt32 LE) | CRC-32 of payload (UInt32 LE) | payload
///
/// `0xFF` never occurs in UTF-8, so JSON payloads cannot imitate the magic; anything else that does
/// is rejected by the length and checksum checks when resynchronising after damage.
enum RecordFormat {
    static let magic: [UInt8] = [0xFF, 0x54, 0x43, 0x53, 0x50, 0x4F, 0x4F, 0x4C]
    static let headerSize = 16
    /// Larger lengths are treated as damage (a record is one webhook's messages).
    static let maximumPayload = 256 * 1024 * 1024

    static func frame(_ payload: [UInt8]) -> [UInt8] {
        var bytes = magic
        bytes.reserveCapacity(headerSize + payload.count)
        appendLittleEndian(UInt32(payload.count), to: &bytes)
        appendLittleEndian(CRC32.checksum(payload), to: &bytes)
        bytes.append(contentsOf: payload)
        return bytes
    }

    enum Parsed: Equatable {
        case record(payloadRange: Range<Int>, end: Int)
        /// Bytes at `offset` do not start a valid record.
        case damaged
        /// A header or payload runs past the end of the data (a write torn by a crash).
        case truncated
    }

    /// Parses the record starting at `offset` of `data`.
    static func parse(_ data: UnsafeRawBufferPointer, at offset: Int) -> Parsed {
        guard offset + headerSize <= data.count else {
            return matchesMagicPrefix(data, at: offset) ? .truncated : .damaged
        }
        for index in 0..<magic.count where data[offset + index] != magic[index] { return .damaged }
        let length = Int(readLittleEndian(data, at: offset + 8))
        let checksum = readLittleEndian(data, at: offset + 12)
        guard length <= maximumPayload else { return .damaged }
        let payloadStart = offset + headerSize
        guard payloadStart + length <= data.count else { return .truncated }
        let payload = UnsafeRawBufferPointer(rebasing: data[payloadStart..<payloadStart + length])
        guard CRC32.checksum(payload) == checksum else { return .damaged }
        return .record(payloadRange: payloadStart..<payloadStart + length, end: payloadStart + length)
    }

    /// The offset of the next valid record after `offset`, if any.
    static func resynchronise(_ data: UnsafeRawBufferPointer, after offset: Int) -> Int? {
        var candidate = offset + 1
        while candidate + headerSize <= data.count {
            if data[candidate] == magic[0], case .record = parse(data, at: candidate) { return candidate }
            candidate += 1
        }
        return nil
    }

    private static func matchesMagicPrefix(_ data: UnsafeRawBufferPointer, at offset: Int) -> Bool {
        let available = min(magic.count, data.count - offset)
        for index in 0..<available where data[offset + index] != magic[index] { return false }
        return true
    }

    static func appendLittleEndian(_ value: UInt32, to bytes: inout [UInt8]) {
        for shift in stride(from: 0, to: 32, by: 8) { bytes.append(UInt8(truncatingIfNeeded: value >> UInt32(shift))) }
    }

    static func readLittleEndian(_ data: UnsafeRawBufferPointer, at offset: Int) -> UInt32 {
        var value: UInt32 = 0
        for index in 0..<4 { value |= UInt32(data[offset + index]) << UInt32(8 * index) }
        return value
    }
}
