import Logging
import Synchronization

#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

/// The bridge's log lines: human-readable text or one JSON object per line, on standard error.
///
/// Metadata is kept as values and rendered only when a line is written: setting metadata (which
/// Hummingbird does for every request) costs a dictionary store, not a formatted string.
///
/// Threading: a value type per logger; lines from all threads go through one lock, so they never
/// interleave. Errors: a failed write is ignored (there is nowhere left to report it).
public struct BridgeLogHandler: LogHandler {
    public enum Format: String, Sendable, CaseIterable {
        /// `2026-11-30T12:00:00.123Z info tc-bridge: message key=value ...`
        case text
        /// `{"time":"…","level":"info","logger":"tc-bridge","message":"…","key":"value",…}`
        case json
    }

    public var logLevel: Logger.Level = .info
    public var metadata: Logger.Metadata = [:]
    public var metadataProvider: Logger.MetadataProvider?
    let label: String
    let format: Format
    let output: LogOutput

    public init(label: String, format: Format, metadataProvider: Logger.MetadataProvider? = nil) {
        self.init(label: label, format: format, output: .standardError, metadataProvider: metadataProvider)
    }

    init(label: String, format: Format, output: LogOutput, metadataProvider: Logger.MetadataProvider? = nil) {
        self.label = label
        self.format = format
        self.output = output
        self.metadataProvider = metadataProvider
    }

    public subscript(metadataKey key: String) -> Logger.Metadata.Value? {
        get { metadata[key] }
        set { metadata[key] = newValue }
    }

    public func log(
        level: Logger.Level, message: Logger.Message, metadata explicit: Logger.Metadata?, source: String, file: String,
        function: String, line: UInt
    ) {
        var merged = metadata
        if let provided = metadataProvider?.get() { merged.merge(provided) { _, new in new } }
        if let explicit { merged.merge(explicit) { _, new in new } }
        let line = render(level: level, message: message.description, metadata: merged, source: source, time: Self.timestamp())
        output.write(line)
    }

    /// One line, newline included. Internal for tests.
    func render(level: Logger.Level, message: String, metadata: Logger.Metadata, source: String, time: String) -> String {
        switch format {
        case .text:
            var line = "\(time) \(level) \(label):"
            for (key, value) in metadata.sorted(by: { $0.key < $1.key }) {
                line += " \(key)=\(Self.text(value))"
            }
            line += " [\(source)] \(message)\n"
            return line
        case .json:
            var line = "{\"time\":\(Self.quoted(time)),\"level\":\(Self.quoted(level.rawValue)),\"logger\":\(Self.quoted(label))"
            line += ",\"source\":\(Self.quoted(source)),\"message\":\(Self.quoted(message))"
            for (key, value) in metadata.sorted(by: { $0.key < $1.key }) where !Self.reservedKeys.contains(key) {
                line += ",\(Self.quoted(key)):\(Self.json(value))"
            }
            line += "}\n"
            return line
        }
    }

    /// Keys the JSON line writes itself; metadata of the same name is left out rather than doubled.
    static let reservedKeys: Set<String> = ["time", "level", "logger", "source", "message"]

    private static func text(_ value: Logger.Metadata.Value) -> String {
        switch value {
        case .string(let string): string
        case .stringConvertible(let convertible): convertible.description
        case .array(let array): "[" + array.map(text).joined(separator: ", ") + "]"
        case .dictionary(let dictionary): "[" + dictionary.sorted(by: { $0.key < $1.key }).map { "\($0.key): \(text($0.value))" }.joined(separator: ", ") + "]"
        }
    }

    private static func json(_ value: Logger.Metadata.Value) -> String {
        switch value {
        case .string(let string): quoted(string)
        case .stringConvertible(let convertible): quoted(convertible.description)
        case .array(let array): "[" + array.map(json).joined(separator: ",") + "]"
        case .dictionary(let dictionary): "{" + dictionary.sorted(by: { $0.key < $1.key }).map { "\(quoted($0.key)):\(json($0.value))" }.joined(separator: ",") + "}"
        }
    }

    /// A JSON string literal: quotes, backslashes and control characters escaped.
    static func quoted(_ string: String) -> String {
        var out = "\""
        out.reserveCapacity(string.utf8.count + 2)
        for scalar in string.unicodeScalars {
            switch scalar {
            case "\"": out += "\\\""
            case "\\": out += "\\\\"
            case "\n": out += "\\n"
            case "\r": out += "\\r"
            case "\t": out += "\\t"
            case _ where scalar.value < 0x20:
                let hex = String(scalar.value, radix: 16)
                out += "\\u" + String(repeating: "0", count: 4 - hex.count) + hex
            default: out.unicodeScalars.append(scalar)
            }
        }
        out += "\""
        return out
    }

    /// UTC, ISO 8601 with milliseconds.
    static func timestamp() -> String {
        var now = timespec()
        clock_gettime(CLOCK_REALTIME, &now)
        var seconds = now.tv_sec
        var parts = tm()
        gmtime_r(&seconds, &parts)
        func two(_ value: Int32) -> String { value < 10 ? "0\(value)" : "\(value)" }
        let millis = Int(now.tv_nsec / 1_000_000)
        let millisText = millis < 10 ? "00\(millis)" : millis < 100 ? "0\(millis)" : "\(millis)"
        return "\(parts.tm_year + 1900)-\(two(parts.tm_mon + 1))-\(two(parts.tm_mday))T\(two(parts.tm_hour)):\(two(parts.tm_min)):\(two(parts.tm_sec)).\(millisText)Z"
    }
}

/// Where log lines go: standard error, or a capture for tests. Thread-safe.
final class LogOutput: Sendable {
    private let lock = Mutex<[String]?>(nil)

    static let standardError = LogOutput(capturing: false)

    init(capturing: Bool) {
        if capturing { lock.withLock { $0 = [] } }
    }

    var captured: [String] { lock.withLock { $0 ?? [] } }

    func write(_ line: String) {
        lock.withLock { captured in
            if captured != nil {
                captured?.append(line)
                return
            }
            var line = line
            line.withUTF8 { bytes in
                guard let base = bytes.baseAddress else { return }
                var offset = 0
                while offset < bytes.count {
                    let written = systemWrite(2, base + offset, bytes.count - offset)
                    if written <= 0 {
                        if written < 0, errno == EINTR { continue }
                        return
                    }
                    offset += written
                }
            }
        }
    }
}

#if canImport(Glibc)
private let systemWrite = Glibc.write
#elseif canImport(Darwin)
private let systemWrite = Darwin.write
#endif
