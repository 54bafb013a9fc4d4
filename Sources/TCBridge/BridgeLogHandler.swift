import Dispatch
import Foundation
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

    /// Writes the event as one line: the handler's metadata, then the provider's, then the call's
    /// (later wins); an error attached to the call is rendered as `error` unless the call set one.
    public func log(event: LogEvent) {
        var merged = metadata
        if let provided = metadataProvider?.get() { merged.merge(provided) { _, new in new } }
        if let explicit = event.metadata { merged.merge(explicit) { _, new in new } }
        if let error = event.error, merged["error"] == nil { merged["error"] = "\(error)" }
        output.write(render(level: event.level, message: event.message.description, metadata: merged, source: event.source, time: Self.timestamp()))
    }

    /// Waits (briefly) until the lines logged so far are handed to standard error; call before exiting.
    public static func flush() { LogOutput.standardError.flush() }

    /// One line, newline included. Internal for tests.
    func render(level: Logger.Level, message: String, metadata: Logger.Metadata, source: String, time: String) -> String {
        switch format {
        case .text:
            var line = "\(time) \(level) \(label):"
            for (key, value) in metadata.sorted(by: { $0.key < $1.key }) {
                line += " \(key)=\(Self.oneLine(Self.text(value)))"
            }
            line += " [\(source)] \(Self.oneLine(message))\n"
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

    /// `text` with line breaks and other control characters escaped, so a value from a request can
    /// never start a forged log line.
    static func oneLine(_ text: String) -> String {
        guard text.unicodeScalars.contains(where: { $0.value < 0x20 || $0.value == 0x7F }) else { return text }
        var out = ""
        for scalar in text.unicodeScalars {
            switch scalar {
            case "\n": out += "\\n"
            case "\r": out += "\\r"
            case "\t": out += "\\t"
            case _ where scalar.value < 0x20 || scalar.value == 0x7F: out += "\\u{\(String(scalar.value, radix: 16))}"
            default: out.unicodeScalars.append(scalar)
            }
        }
        return out
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

/// Where log lines go: standard error through a writer thread of its own, or a capture for tests.
///
/// A line is handed over under a lock and written by the writer thread, so a logging thread (an
/// event loop) never blocks on a slow or stuck standard error (a full pipe, a log driver that
/// stopped reading). At most `maximumQueuedBytes` wait; beyond that lines are dropped and their
/// number is written once the writer catches up. Thread-safe.
///
/// The writer is woken only when it waits idle, takes every queued line at once and writes them
/// with one call, then lingers for `linger` before it looks again: under load a batch of lines
/// costs one wake-up and one `write(2)` instead of one each per line (a line per request at info
/// level). A line reaches standard error at most `linger` plus one write after it was logged.
final class LogOutput: Sendable {
    private struct Queue {
        var lines: [String] = []
        var bytes = 0
        var dropped = 0
        var captured: [String]?
        /// The writer waits on `ready` and must be signalled for new lines.
        var writerWaits = false
        /// The writer is handing a batch to its sink.
        var writing = false
    }

    private let queue = Mutex(Queue())
    private let ready = DispatchSemaphore(value: 0)
    private let maximumQueuedBytes: Int
    /// Default limit of bytes waiting for the writer.
    static let defaultMaximumQueuedBytes = 4 << 20
    /// Default pause of the writer after each batch (see the type's note).
    static let defaultLinger = Duration.milliseconds(2)

    static let standardError = LogOutput(sink: LogOutput.writeToStandardError)

    /// A capture for tests: lines are kept, nothing is written.
    init(capturing: Bool) {
        precondition(capturing, "use LogOutput.standardError or init(sink:)")
        maximumQueuedBytes = Self.defaultMaximumQueuedBytes
        queue.withLock { $0.captured = [] }
    }

    /// A writer thread handing batches of lines to `sink` (internal for tests).
    init(
        sink: @escaping @Sendable ([UInt8]) -> Void, maximumQueuedBytes: Int = LogOutput.defaultMaximumQueuedBytes,
        linger: Duration = LogOutput.defaultLinger
    ) {
        self.maximumQueuedBytes = maximumQueuedBytes
        let thread = Thread { [self] in self.writeForever(to: sink, linger: linger) }
        thread.name = "tc-bridge-log"
        thread.start()
    }

    var captured: [String] { queue.withLock { $0.captured ?? [] } }

    /// Waits (at most `timeout`) until the writer has written every queued line; for exit paths.
    func flush(timeout: Duration = .seconds(1)) {
        let deadline = ContinuousClock.now + timeout
        while queue.withLock({ !$0.lines.isEmpty || $0.dropped > 0 || $0.writing }), ContinuousClock.now < deadline {
            usleep(1000)
        }
    }

    func write(_ line: String) {
        let wake = queue.withLock { queue -> Bool in
            if queue.captured != nil {
                queue.captured?.append(line)
                return false
            }
            guard queue.bytes + line.utf8.count <= maximumQueuedBytes else {
                queue.dropped += 1
                return false
            }
            queue.lines.append(line)
            queue.bytes += line.utf8.count
            guard queue.writerWaits else { return false }
            queue.writerWaits = false
            return true
        }
        if wake { ready.signal() }
    }

    private func writeForever(to sink: ([UInt8]) -> Void, linger: Duration) {
        let lingerMicroseconds = useconds_t(clamping: linger.components.seconds * 1_000_000 + linger.components.attoseconds / 1_000_000_000_000)
        while true {
            let (lines, bytes, dropped) = queue.withLock { queue -> ([String], Int, Int) in
                defer {
                    queue.lines.removeAll(keepingCapacity: true)
                    queue.bytes = 0
                    queue.dropped = 0
                }
                if queue.lines.isEmpty && queue.dropped == 0 {
                    queue.writerWaits = true
                } else {
                    queue.writing = true
                }
                return (queue.lines, queue.bytes, queue.dropped)
            }
            if lines.isEmpty && dropped == 0 {
                ready.wait()
                continue
            }
            var batch: [UInt8] = []
            batch.reserveCapacity(bytes + (dropped > 0 ? 64 : 0))
            if dropped > 0 { batch.append(contentsOf: "tc-bridge: \(dropped) log lines dropped (standard error too slow)\n".utf8) }
            for line in lines { batch.append(contentsOf: line.utf8) }
            sink(batch)
            queue.withLock { $0.writing = false }
            if lingerMicroseconds > 0 { usleep(lingerMicroseconds) }
        }
    }

    /// Writes all of `bytes` to file descriptor 2, retrying after interrupts and partial writes;
    /// gives up on an error (there is nowhere left to report it).
    @Sendable static func writeToStandardError(_ bytes: [UInt8]) {
        bytes.withUnsafeBufferPointer { buffer in
            guard let base = buffer.baseAddress else { return }
            var offset = 0
            while offset < buffer.count {
                let written = systemWrite(2, base + offset, buffer.count - offset)
                if written <= 0 {
                    if written < 0, errno == EINTR { continue }
                    return
                }
                offset += written
            }
        }
    }
}

#if canImport(Glibc)
private let systemWrite = Glibc.write
#elseif canImport(Darwin)
private let systemWrite = Darwin.write
#endif
