import ArgumentParser
import TCBridge
import TutorCruncher
import TutorCruncherSignature

#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

/// Reads settings that may come from a flag or an environment variable (the flag wins).
enum Environment {
    static func value(_ name: String) -> String? {
        guard let raw = getenv(name) else { return nil }
        let value = String(cString: raw)
        return value.isEmpty ? nil : value
    }

    static func resolve(_ flag: String?, env name: String, default fallback: String) -> String {
        flag ?? value(name) ?? fallback
    }

    static func resolveInt(_ flag: Int?, env name: String, default fallback: Int) throws -> Int {
        if let flag { return flag }
        guard let text = value(name) else { return fallback }
        guard let number = Int(text) else { throw ValidationError("\(name) must be an integer, got \"\(text)\"") }
        return number
    }

    static func resolveDouble(_ flag: Double?, env name: String, default fallback: Double) throws -> Double {
        if let flag { return flag }
        guard let text = value(name) else { return fallback }
        guard let number = Double(text), number.isFinite else { throw ValidationError("\(name) must be a number, got \"\(text)\"") }
        return number
    }

    /// A positive number of seconds (at most a day) as a `Duration`.
    static func resolveSeconds(_ flag: Double?, env name: String, default fallback: Double) throws -> Duration {
        let seconds = try resolveDouble(flag, env: name, default: fallback)
        guard seconds > 0, seconds <= 86_400 else { throw ValidationError("\(name) must be between 0 and 86400 seconds, got \(seconds)") }
        return .milliseconds(Int64(seconds * 1000))
    }

    /// The integration's private API key(s): `--private-key-file`/`TC_PRIVATE_KEY_FILE` (one key per
    /// non-empty line; several lines during a key rotation), else `TC_PRIVATE_KEY`. Never a flag value,
    /// so a key never shows in `ps`. `TC_PRIVATE_KEY` is removed from the environment once read.
    /// A key that is empty or only whitespace is refused, and so is a key file that group or others
    /// may access, unless `allowInsecureFile`. Errors name the file or variable, never a key.
    static func signingKeys(file flag: String?, allowInsecureFile: Bool) throws -> (keys: [WebhookSigningKey], source: KeySource) {
        let environmentKey = value("TC_PRIVATE_KEY")
        if environmentKey != nil { unsetenv("TC_PRIVATE_KEY") }
        if let path = flag ?? value("TC_PRIVATE_KEY_FILE") {
            do {
                let keys = try SigningKeyFile.load(path: path, allowInsecurePermissions: allowInsecureFile)
                return (keys, .file(path: path, allowInsecurePermissions: allowInsecureFile))
            } catch {
                throw ValidationError(error.description)
            }
        }
        if let environmentKey {
            let key = SigningKeyFile.trimmedKey(environmentKey)
            guard !key.isEmpty else {
                throw ValidationError("TC_PRIVATE_KEY is only whitespace: refusing to verify with an empty key")
            }
            guard !key.contains(where: \.isNewline) else {
                throw ValidationError("TC_PRIVATE_KEY holds several lines: put several keys in a key file (--private-key-file) instead")
            }
            return ([WebhookSigningKey(key)], .environment)
        }
        throw ValidationError(
            "no private API key configured: set TC_PRIVATE_KEY or pass --private-key-file PATH (TC_PRIVATE_KEY_FILE)")
    }

    /// Where the signing keys came from, so SIGHUP knows whether it can reload them.
    enum KeySource: Sendable {
        /// A key file, re-read on SIGHUP with the same checks.
        case file(path: String, allowInsecurePermissions: Bool)
        /// `TC_PRIVATE_KEY`: removed from the environment once read, so it cannot be reloaded.
        case environment
    }

    /// Whether a boolean environment variable is set to `1`, `true` or `yes` (any case).
    static func flag(_ name: String) throws -> Bool {
        guard let text = value(name) else { return false }
        switch text.lowercased() {
        case "1", "true", "yes": return true
        case "0", "false", "no": return false
        default: throw ValidationError("\(name) must be 1 or 0, got \"\(text)\"")
        }
    }

    static func readFile(_ path: String) -> String? {
        guard let bytes = readBytes(path) else { return nil }
        return String(decoding: bytes, as: UTF8.self)
    }

    static func readBytes(_ path: String) -> [UInt8]? {
        guard let file = fopen(path, "rb") else { return nil }
        defer { fclose(file) }
        var result: [UInt8] = []
        var buffer = [UInt8](repeating: 0, count: 65536)
        while true {
            let count = fread(&buffer, 1, buffer.count, file)
            if count > 0 { result.append(contentsOf: buffer[0..<count]) }
            if count < buffer.count {
                if ferror(file) != 0 { return nil }
                return result
            }
        }
    }
}
