/// Hexadecimal digits, written once for every module (signatures, digests, percent-encoding).
/// Pure functions; no dependencies.
public enum Hex {
    /// The value of one hex digit (either case), or `nil` for any other byte.
    @inlinable
    public static func value(of digit: UInt8) -> UInt8? {
        switch digit {
        case UInt8(ascii: "0")...UInt8(ascii: "9"): digit - UInt8(ascii: "0")
        case UInt8(ascii: "a")...UInt8(ascii: "f"): digit - UInt8(ascii: "a") + 10
        case UInt8(ascii: "A")...UInt8(ascii: "F"): digit - UInt8(ascii: "A") + 10
        default: nil
        }
    }

    /// The bytes spelled by `digits` (an even number of hex digits, either case), or `nil`.
    public static func decode(_ digits: some Collection<UInt8>) -> [UInt8]? {
        guard digits.count % 2 == 0 else { return nil }
        var bytes: [UInt8] = []
        bytes.reserveCapacity(digits.count / 2)
        var iterator = digits.makeIterator()
        while let high = iterator.next(), let low = iterator.next() {
            guard let h = value(of: high), let l = value(of: low) else { return nil }
            bytes.append(h << 4 | l)
        }
        return bytes
    }

    /// Lower-case hex of `bytes`. Contiguous bytes (an array, a buffer) are spelled straight into
    /// the string's storage; any other sequence is copied into an array first.
    @inlinable
    public static func encode(_ bytes: some Sequence<UInt8>) -> String {
        if let hex = bytes.withContiguousStorageIfAvailable({ encode(buffer: $0) }) { return hex }
        return Array(bytes).withUnsafeBufferPointer { encode(buffer: $0) }
    }

    /// Lower-case hex of the bytes in `buffer`, written into a new string's storage.
    ///
    /// `buffer.count * 2` cannot overflow: a buffer of more than `Int.max / 2` bytes cannot be
    /// mapped on any platform Swift runs on (64-bit address spaces are at most 2^57 bytes).
    public static func encode(buffer: UnsafeBufferPointer<UInt8>) -> String {
        String(unsafeUninitializedCapacity: buffer.count * 2) { out in
            var position = 0
            for byte in buffer {
                out[position] = digit(byte >> 4)
                out[position + 1] = digit(byte & 0xF)
                position += 2
            }
            return position
        }
    }

    /// The lower-case digit of a value under 16.
    @inline(__always)
    static func digit(_ value: UInt8) -> UInt8 {
        value < 10 ? UInt8(ascii: "0") + value : UInt8(ascii: "a") - 10 + value
    }
}
