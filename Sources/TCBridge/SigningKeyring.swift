import Synchronization
import TutorCruncher
import TutorCruncherSignature

#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

/// The verifier requests use, replaceable while the bridge runs (key rotation on SIGHUP).
///
/// Each request reads ``verifier`` once and uses that snapshot for its whole check, so a
/// ``replace(_:)`` during a request never drops or half-verifies it: requests already reading get
/// the old key set, later ones the new. Thread-safe (a `Mutex` around one value).
public final class SigningKeyring: Sendable {
    private let current: Mutex<WebhookVerifier>

    public init(_ verifier: WebhookVerifier) {
        current = Mutex(verifier)
    }

    /// The key set to verify with right now.
    public var verifier: WebhookVerifier { current.withLock { $0 } }

    /// Installs a new key set for every later request.
    public func replace(_ verifier: WebhookVerifier) {
        current.withLock { $0 = verifier }
    }
}

/// Why a private key file cannot be used. Descriptions name the file, never its contents.
public enum SigningKeyFileError: Error, Sendable, Equatable, CustomStringConvertible {
    case unreadable(path: String, reason: String)
    case notARegularFile(path: String)
    /// Group or others have any permission on it (`mode` is the permission bits, e.g. 0o644).
    case insecurePermissions(path: String, mode: UInt32)
    case tooLarge(path: String, limit: Int)
    case notUTF8(path: String)
    case empty(path: String)

    public var description: String {
        switch self {
        case .unreadable(let path, let reason): "cannot read private key file \(path): \(reason)"
        case .notARegularFile(let path): "private key file \(path) is not a regular file"
        case .insecurePermissions(let path, let mode):
            "private key file \(path) is accessible by group or others (mode \(String(mode, radix: 8))); "
                + "run chmod 600 on it, or pass --allow-insecure-key-file (TC_BRIDGE_ALLOW_INSECURE_KEY_FILE=1) to accept that"
        case .tooLarge(let path, let limit): "private key file \(path) is larger than \(limit) bytes; it should hold a few keys"
        case .notUTF8(let path): "private key file \(path) is not UTF-8 text"
        case .empty(let path): "private key file \(path) is empty: it holds no key (blank lines and spaces do not count)"
        }
    }
}

/// Reads the integration's private API key(s) from a file: one key per line, surrounding spaces,
/// tabs and blank lines ignored; during a rotation it holds both keys (any verifies; the first signs).
public enum SigningKeyFile {
    /// Key files larger than this are refused (they are a few lines of text).
    public static let maxBytes = 64 * 1024

    /// Reads and checks the file at `path`. Unless `allowInsecurePermissions`, a file that group or
    /// others may read, write or execute is refused (checked on the opened descriptor, so the file
    /// checked is the file read). Blocking file I/O; call it at start-up or from a signal handler
    /// task, not per request. Thread-safe.
    public static func load(path: String, allowInsecurePermissions: Bool) throws(SigningKeyFileError) -> [WebhookSigningKey] {
        // O_NONBLOCK: a FIFO with no writer would otherwise hold the opening thread (an event loop
        // on SIGHUP) forever; it is then refused as not a regular file. A regular file ignores it.
        let descriptor = open(path, O_RDONLY | O_CLOEXEC | O_NONBLOCK)
        guard descriptor >= 0 else { throw .unreadable(path: path, reason: String(cString: strerror(errno))) }
        defer { close(descriptor) }
        var status = stat()
        guard fstat(descriptor, &status) == 0 else { throw .unreadable(path: path, reason: String(cString: strerror(errno))) }
        guard UInt32(status.st_mode) & 0o170000 == 0o100000 else { throw .notARegularFile(path: path) }  // S_ISREG
        let permissions = UInt32(status.st_mode) & 0o777
        if permissions & 0o077 != 0, !allowInsecurePermissions {
            throw .insecurePermissions(path: path, mode: permissions)
        }
        var bytes: [UInt8] = []
        var buffer = [UInt8](repeating: 0, count: 4096)
        while true {
            let count = buffer.withUnsafeMutableBytes { read(descriptor, $0.baseAddress, $0.count) }
            if count < 0 {
                if errno == EINTR { continue }
                throw .unreadable(path: path, reason: String(cString: strerror(errno)))
            }
            if count == 0 { break }
            bytes.append(contentsOf: buffer[0..<count])
            guard bytes.count <= maxBytes else { throw .tooLarge(path: path, limit: maxBytes) }
        }
        guard let text = String(validating: bytes, as: UTF8.self) else { throw .notUTF8(path: path) }
        let keys = parse(text)
        guard !keys.isEmpty else { throw .empty(path: path) }
        return keys
    }

    /// One key per line; spaces, tabs and carriage returns around a key are not part of it.
    public static func parse(_ text: String) -> [WebhookSigningKey] {
        text.split(whereSeparator: \.isNewline)
            .map { trimmedKey($0) }
            .filter { !$0.isEmpty }
            .map(WebhookSigningKey.init)
    }

    /// `text` without surrounding spaces, tabs, carriage returns or line feeds (empty if nothing else).
    public static func trimmedKey(_ text: some StringProtocol) -> String {
        let blank: Set<Character> = [" ", "\t", "\r", "\n", "\r\n"]
        var slice = Substring(text)
        while let first = slice.first, blank.contains(first) { slice = slice.dropFirst() }
        while let last = slice.last, blank.contains(last) { slice = slice.dropLast() }
        return String(slice)
    }
}
