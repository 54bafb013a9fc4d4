import Dispatch
import DurationUnits
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
        let line = render(level: event.level, message: event.message.description, metadata: merged, source: event.source, time: Self.timestamp())
        output.write(line, urgent: event.level >= .error)
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
/// stopped reading). Lines wait up to `maximumQueuedBytes` (a single line of any size is taken when
/// nothing else waits); beyond that they are dropped, and their number is written after the lines
/// before them once the writer catches up. While standard error is stuck, memory holds the queue
/// and the batch being written: about three times the limit. Thread-safe.
///
/// The writer is woken only when it waits idle, takes every queued line at once and writes them
/// with one call, then lingers for `linger` before it looks again: under load a batch of lines
/// costs one wake-up and one `write(2)` instead of one each per line (a line per request at info
/// level). An urgent line (`error` and above) ends the linger at once.
final class LogOutput: Sendable {
    private struct Queue {
        var lines: [String] = []
        var bytes = 0
        var dropped = 0
        var captured: [String]?
        /// The writer waits idle on `ready` and must be signalled for any line.
        var writerWaits = false
        /// An urgent line has signalled `ready` since the writer last took the queue: the writer
        /// skips or ends its linger (busy or lingering, it looks at `ready` before it lingers on).
        var urgentSignalled = false
        /// Lines queued and written so far, and notices of dropped lines written so far: `flush`
        /// waits for what was queued before it.
        var queued = 0
        var written = 0
        var notices = 0
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
    static func capture() -> LogOutput { LogOutput(capturing: ()) }

    private init(capturing: Void) {
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

    /// Waits (at most `timeout`) until the lines queued before this call, and any notice of dropped
    /// lines, are written; for exit paths.
    func flush(timeout: Duration = .seconds(1)) {
        let (lines, notices) = queue.withLock { ($0.queued, $0.notices + ($0.dropped > 0 ? 1 : 0)) }
        let deadline = ContinuousClock.now + timeout
        while queue.withLock({ $0.written < lines || $0.notices < notices }), ContinuousClock.now < deadline {
            usleep(1000)
        }
    }

    /// Queues `line` (newline included) for the writer. `urgent`: end the writer's linger for it.
    func write(_ line: String, urgent: Bool = false) {
        let wake = queue.withLock { queue -> Bool in
            if queue.captured != nil {
                queue.captured?.append(line)
                return false
            }
            if queue.lines.isEmpty || queue.bytes + line.utf8.count <= maximumQueuedBytes {
                queue.lines.append(line)
                queue.bytes += line.utf8.count
                queue.queued += 1
            } else {
                queue.dropped += 1
            }
            if queue.writerWaits {
                queue.writerWaits = false
                return true
            }
            if urgent && !queue.urgentSignalled {
                queue.urgentSignalled = true
                return true
            }
            return false
        }
        if wake { ready.signal() }
    }

    private func writeForever(to sink: ([UInt8]) -> Void, linger: Duration) {
        let lingerNanoseconds = Int(clamping: linger.clampedNanoseconds)
        while true {
            let (lines, bytes, dropped) = queue.withLock { queue -> ([String], Int, Int) in
                defer {
                    queue.lines = []
                    queue.bytes = 0
                    queue.dropped = 0
                    queue.urgentSignalled = false
                }
                if queue.lines.isEmpty && queue.dropped == 0 { queue.writerWaits = true }
                return (queue.lines, queue.bytes, queue.dropped)
            }
            if lines.isEmpty && dropped == 0 {
                ready.wait()
                continue
            }
            var batch: [UInt8] = []
            batch.reserveCapacity(bytes + (dropped > 0 ? 80 : 0))
            for line in lines { batch.append(contentsOf: line.utf8) }
            if dropped > 0 { batch.append(contentsOf: "tc-bridge: \(dropped) log lines dropped (standard error too slow)\n".utf8) }
            sink(batch)
            queue.withLock { queue in
                queue.written += lines.count
                if dropped > 0 { queue.notices += 1 }
            }
            // Ends early for an urgent line (its signal); a signal left over makes one spare turn.
            if lingerNanoseconds > 0 { _ = ready.wait(timeout: .now() + .nanoseconds(lingerNanoseconds)) }
        }
    }

    /// Writes all of `bytes` to file descriptor 2, retrying after interrupts, partial writes and a
    /// full non-blocking descriptor; gives up on any other error (there is nowhere left to report it).
    @Sendable static func writeToStandardError(_ bytes: [UInt8]) {
        bytes.withUnsafeBufferPointer { buffer in
            guard let base = buffer.baseAddress else { return }
            var offset = 0
            while offset < buffer.count {
                let written = systemWrite(2, base + offset, buffer.count - offset)
                if written > 0 {
                    offset += written
                } else if written < 0, errno == EINTR {
                    continue
                } else if written < 0, errno == EAGAIN || errno == EWOULDBLOCK {
                    var writable = pollfd(fd: 2, events: Int16(POLLOUT), revents: 0)
                    _ = poll(&writable, 1, 1000)
                } else {
                    return
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
