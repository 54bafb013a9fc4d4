import ArgumentParser
import TutorCruncher

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
    static func signingKeys(file flag: String?) throws -> [WebhookSigningKey] {
        if let path = flag ?? value("TC_PRIVATE_KEY_FILE") {
            guard let contents = readFile(path) else {
                throw ValidationError("cannot read private key file \(path)")
            }
            let keys = contents.split(whereSeparator: \.isNewline)
                .map { $0.trimmingCharacters(in: " \t\r") }
                .filter { !$0.isEmpty }
                .map(WebhookSigningKey.init)
            guard !keys.isEmpty else { throw ValidationError("private key file \(path) is empty") }
            return keys
        }
        if let key = value("TC_PRIVATE_KEY") {
            unsetenv("TC_PRIVATE_KEY")
            return [WebhookSigningKey(key.trimmingCharacters(in: " \t\r\n"))]
        }
        throw ValidationError(
            "no private API key configured: set TC_PRIVATE_KEY or pass --private-key-file PATH (TC_PRIVATE_KEY_FILE)")
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

extension Substring {
    func trimmingCharacters(in set: String) -> String {
        var slice = self[...]
        while let first = slice.first, set.contains(first) { slice = slice.dropFirst() }
        while let last = slice.last, set.contains(last) { slice = slice.dropLast() }
        return String(slice)
    }
}

extension String {
    func trimmingCharacters(in set: String) -> String { self[...].trimmingCharacters(in: set) }
}
