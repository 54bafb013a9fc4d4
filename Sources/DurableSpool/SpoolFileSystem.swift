#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

/// An `errno` value from a failed file-system call.
struct SpoolErrno: Error, Equatable, CustomStringConvertible {
    var code: Int32
    init(_ code: Int32) { self.code = code }
    var description: String { String(cString: strerror(code)) }
}

/// How the spool opens a path.
enum SpoolOpenMode: Sendable {
    /// An existing segment, read back after a restart.
    case readOnly
    /// A new segment: read-write, and it must not exist yet.
    case createExclusive
    /// A file under `corrupt/`: created or truncated, write-only.
    case replace
    /// A directory, opened to `fsync` it.
    case directory
    /// `<spool-dir>/lock`: created if missing, kept open while the spool runs.
    case lockFile
}

/// Every file-system call the spool makes, so tests can inject failures (short writes, `ENOSPC`,
/// `EIO` from `fsync`) and simulate a crash that drops whatever was never made durable.
///
/// Called only on the spool's serial queue (and from the spool's deinitialiser).
protocol SpoolFileSystem: AnyObject {
    /// Creates `path` and its missing parents; succeeds if it already exists and is writable.
    func makeDirectories(_ path: String) -> Result<Void, SpoolErrno>
    func open(_ path: String, _ mode: SpoolOpenMode) -> Result<Int32, SpoolErrno>
    func close(_ descriptor: Int32)
    /// Writes some of `bytes` at `offset` (like `pwrite`: the count may be short).
    func pwrite(_ descriptor: Int32, _ bytes: UnsafeRawBufferPointer, at offset: Int64) -> Result<Int, SpoolErrno>
    /// Reads up to `buffer.count` bytes at `offset`; 0 at end of file.
    func pread(_ descriptor: Int32, into buffer: UnsafeMutableRawBufferPointer, at offset: Int64) -> Result<Int, SpoolErrno>
    /// `fsync` of a file or of a directory opened with ``SpoolOpenMode/directory``.
    func fsync(_ descriptor: Int32) -> Result<Void, SpoolErrno>
    func ftruncate(_ descriptor: Int32, to size: Int64) -> Result<Void, SpoolErrno>
    func unlink(_ path: String) -> Result<Void, SpoolErrno>
    /// Names of the entries of a directory (without `.` and `..`).
    func listDirectory(_ path: String) -> Result<[String], SpoolErrno>
    /// `flock(LOCK_EX | LOCK_NB)`: fails with `EWOULDBLOCK` when another open file description holds it.
    func lockExclusive(_ descriptor: Int32) -> Result<Void, SpoolErrno>
}

/// The real thing: POSIX calls, retrying `EINTR`.
final class POSIXSpoolFileSystem: SpoolFileSystem {
    func makeDirectories(_ path: String) -> Result<Void, SpoolErrno> {
        var components: [Substring] = []
        for component in path.split(separator: "/", omittingEmptySubsequences: true) {
            components.append(component)
            let partial = (path.hasPrefix("/") ? "/" : "") + components.joined(separator: "/")
            if mkdir(partial, 0o700) != 0 && errno != EEXIST { return .failure(SpoolErrno(errno)) }
        }
        return access(path, W_OK) == 0 ? .success(()) : .failure(SpoolErrno(errno))
    }

    func open(_ path: String, _ mode: SpoolOpenMode) -> Result<Int32, SpoolErrno> {
        let descriptor: Int32
        switch mode {
        case .readOnly: descriptor = posixOpen(path, O_RDONLY | O_CLOEXEC)
        case .createExclusive: descriptor = posixOpen(path, O_RDWR | O_CREAT | O_EXCL | O_CLOEXEC, 0o600)
        case .replace: descriptor = posixOpen(path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0o600)
        case .directory: descriptor = posixOpen(path, O_RDONLY | O_DIRECTORY | O_CLOEXEC)
        case .lockFile: descriptor = posixOpen(path, O_RDWR | O_CREAT | O_CLOEXEC, 0o600)
        }
        return descriptor >= 0 ? .success(descriptor) : .failure(SpoolErrno(errno))
    }

    func close(_ descriptor: Int32) { _ = posixClose(descriptor) }

    func pwrite(_ descriptor: Int32, _ bytes: UnsafeRawBufferPointer, at offset: Int64) -> Result<Int, SpoolErrno> {
        guard let base = bytes.baseAddress else { return .success(0) }
        while true {
            let count = posixPwrite(descriptor, base, bytes.count, off_t(offset))
            if count >= 0 { return .success(count) }
            if errno != EINTR { return .failure(SpoolErrno(errno)) }
        }
    }

    func pread(_ descriptor: Int32, into buffer: UnsafeMutableRawBufferPointer, at offset: Int64) -> Result<Int, SpoolErrno> {
        guard let base = buffer.baseAddress else { return .success(0) }
        while true {
            let count = posixPread(descriptor, base, buffer.count, off_t(offset))
            if count >= 0 { return .success(count) }
            if errno != EINTR { return .failure(SpoolErrno(errno)) }
        }
    }

    func fsync(_ descriptor: Int32) -> Result<Void, SpoolErrno> {
        posixFsync(descriptor) == 0 ? .success(()) : .failure(SpoolErrno(errno))
    }

    func ftruncate(_ descriptor: Int32, to size: Int64) -> Result<Void, SpoolErrno> {
        while true {
            if posixFtruncate(descriptor, off_t(size)) == 0 { return .success(()) }
            if errno != EINTR { return .failure(SpoolErrno(errno)) }
        }
    }

    func unlink(_ path: String) -> Result<Void, SpoolErrno> {
        posixUnlink(path) == 0 ? .success(()) : .failure(SpoolErrno(errno))
    }

    func listDirectory(_ path: String) -> Result<[String], SpoolErrno> {
        guard let directory = opendir(path) else { return .failure(SpoolErrno(errno)) }
        defer { closedir(directory) }
        var names: [String] = []
        while let entry = readdir(directory) {
            let name = withUnsafeBytes(of: entry.pointee.d_name) { raw in
                String(decoding: raw.prefix { $0 != 0 }, as: UTF8.self)
            }
            if name != "." && name != ".." { names.append(name) }
        }
        return .success(names)
    }

    func lockExclusive(_ descriptor: Int32) -> Result<Void, SpoolErrno> {
        while true {
            if flock(descriptor, LOCK_EX | LOCK_NB) == 0 { return .success(()) }
            if errno != EINTR { return .failure(SpoolErrno(errno)) }
        }
    }
}

// The C calls under names the methods above do not shadow.
private func posixOpen(_ path: String, _ flags: Int32, _ mode: mode_t = 0) -> Int32 { open(path, flags, mode) }
private func posixClose(_ descriptor: Int32) -> Int32 { close(descriptor) }
private func posixPwrite(_ descriptor: Int32, _ base: UnsafeRawPointer, _ count: Int, _ offset: off_t) -> Int {
    pwrite(descriptor, base, count, offset)
}
private func posixPread(_ descriptor: Int32, _ base: UnsafeMutableRawPointer, _ count: Int, _ offset: off_t) -> Int {
    pread(descriptor, base, count, offset)
}
private func posixFsync(_ descriptor: Int32) -> Int32 { fsync(descriptor) }
private func posixFtruncate(_ descriptor: Int32, _ size: off_t) -> Int32 { ftruncate(descriptor, size) }
private func posixUnlink(_ path: String) -> Int32 { unlink(path) }
