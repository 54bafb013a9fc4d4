/// Reading the answer of `tc-bridge probe`: the status code of an HTTP/1.x status line
/// (`HTTP/1.1 200 OK`). Pure.
public enum ProbeStatus {
    /// The three-digit status of `bytes`' status line, or `nil` when it is not an HTTP/1.x status line.
    public static func parse(_ bytes: [UInt8]) -> Int? {
        let prefix = Array("HTTP/1.".utf8)
        guard bytes.count >= 12, Array(bytes[0..<7]) == prefix, bytes[8] == UInt8(ascii: " ") else { return nil }
        let digits = bytes[9..<12]
        guard digits.allSatisfy({ (UInt8(ascii: "0")...UInt8(ascii: "9")).contains($0) }) else { return nil }
        return digits.reduce(0) { $0 * 10 + Int($1 - UInt8(ascii: "0")) }
    }
}
