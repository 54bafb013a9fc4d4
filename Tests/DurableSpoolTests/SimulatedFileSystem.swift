@testable import DurableSpool
import Foundation
import TestSupport

/// An in-memory file system for the spool with injectable failures and crashes.
///
/// Each file has its current bytes and the bytes a successful `fsync` made durable; each directory
/// has its current names and the names its last `fsync` made durable. ``crash()`` is a power cut:
/// names go back to the durable ones, and each file keeps its durable bytes plus any prefix of what
/// was written after (possibly with a damaged byte in that unsynced part: a torn tail). A failed
/// file `fsync` may abandon the unsynced bytes for good, as Linux does.
/// ``kill()`` is `kill -9`: nothing written is lost, but every descriptor and lock goes.
final class SimulatedFileSystem: SpoolFileSystem, @unchecked Sendable {
    enum Operation: Hashable { case write, fileSync, directorySync, truncate, create }

    final class Inode {
        var data: [UInt8] = []
        var durable: [UInt8] = []
        /// Bytes a failed `fsync` gave up on (Linux marks such pages clean): a later successful
        /// `fsync` does not write them, so the disk keeps what it had there (or zeros).
        var abandoned: [Range<Int>] = []
    }

    private enum Handle {
        case file(Inode)
        case directory(String)
    }

    private let lock = NSLock()
    private var rng: SplitMix64
    private var directories: Set<String> = ["/"]
    /// Directory → (path → file), now and as of each directory's last `fsync`.
    private var names: [String: [String: Inode]] = [:]
    private var durableNames: [String: [String: Inode]] = [:]
    private var handles: [Int32: Handle] = [:]
    private var nextDescriptor: Int32 = 3
    private var lockHolders: [ObjectIdentifier: Int32] = [:]
    /// `flock` calls still to fail with `EWOULDBLOCK` as if someone else held the lock for a moment.
    private var lockRefusals = 0
    /// Probability that each call of an operation fails.
    private var rates: [Operation: Double] = [:]
    /// The next `n` calls of an operation fail.
    private var scripted: [Operation: Int] = [:]
    /// A short write was returned: the next write fails (the disk is full).
    private var diskFullArmed = false
    /// Counts of calls, for assertions.
    private(set) var calls: [Operation: Int] = [:]

    init(seed: UInt64) { rng = SplitMix64(seed: seed) }

    private func locked<T>(_ body: () -> T) -> T {
        lock.lock()
        defer { lock.unlock() }
        return body()
    }

    // MARK: Test controls

    func setFailureRate(_ operation: Operation, _ rate: Double) { locked { rates[operation] = rate } }
    func clearFailures() {
        locked {
            rates.removeAll()
            scripted.removeAll()
            diskFullArmed = false
        }
    }
    func failNext(_ operation: Operation, times: Int = 1) { locked { scripted[operation, default: 0] += times } }

    /// A power cut (see the type's note).
    func crash() {
        locked {
            dropHandles()
            names = durableNames
            let all = names.values.reduce(into: [String: Inode]()) { $0.merge($1) { first, _ in first } }
            // In name order, so a seed replays the same damage (one name per inode: no hard links).
            for name in all.keys.sorted() {
                guard let inode = all[name] else { continue }
                inode.data = crashImage(inode)
                inode.durable = inode.data
                inode.abandoned = []
            }
        }
    }

    /// `kill -9` of the process: descriptors and locks go, every byte written stays.
    func kill() { locked { dropHandles() } }

    func contents(_ path: String) -> [UInt8]? { locked { lookup(path)?.data } }
    func setContents(_ path: String, _ bytes: [UInt8]) { locked { lookup(path)?.data = bytes } }
    /// Names (full paths) directly inside `directory`.
    func files(in directory: String) -> [String] { locked { (names[directory] ?? [:]).keys.sorted() } }

    private func dropHandles() {
        handles.removeAll()
        lockHolders.removeAll()
    }

    private func crashImage(_ inode: Inode) -> [UInt8] {
        let extended =
            inode.data.count > inode.durable.count
            && inode.data.withUnsafeBytes { data in inode.durable.withUnsafeBytes { durable in
                guard let dataStart = data.baseAddress, let durableStart = durable.baseAddress else { return true }  // nothing durable yet
                return memcmp(dataStart, durableStart, durable.count) == 0
            } }
        guard extended else { return inode.durable }
        let kept = Int.random(in: inode.durable.count...inode.data.count, using: &rng)
        var image = Array(inode.data[0..<kept])
        if kept > inode.durable.count, Int.random(in: 0..<3, using: &rng) == 0 {
            image[Int.random(in: inode.durable.count..<kept, using: &rng)] ^= 0x5A
        }
        return image
    }

    private func shouldFail(_ operation: Operation) -> Bool {
        calls[operation, default: 0] += 1
        if let count = scripted[operation], count > 0 {
            scripted[operation] = count - 1
            return true
        }
        guard let rate = rates[operation], rate > 0 else { return false }
        return Double.random(in: 0..<1, using: &rng) < rate
    }

    private func lookup(_ path: String) -> Inode? { names[parent(of: path)]?[path] }

    private func parent(of path: String) -> String {
        guard let slash = path.utf8.lastIndex(of: UInt8(ascii: "/")) else { return "." }
        return slash == path.utf8.startIndex ? "/" : String(Substring(path.utf8[..<slash]))
    }

    private func fileInode(_ descriptor: Int32) -> Inode? {
        if case .file(let inode) = handles[descriptor] { return inode }
        return nil
    }

    private func newDescriptor(_ handle: Handle) -> Int32 {
        let descriptor = nextDescriptor
        nextDescriptor += 1
        handles[descriptor] = handle
        return descriptor
    }

    // MARK: SpoolFileSystem

    func makeDirectories(_ path: String) -> Result<Void, SpoolErrno> {
        locked {
            var current = ""
            for component in path.split(separator: "/") {
                current += "/" + component
                if lookup(current) != nil { return .failure(SpoolErrno(ENOTDIR)) }
                directories.insert(current)
            }
            return .success(())
        }
    }

    func open(_ path: String, _ mode: SpoolOpenMode) -> Result<Int32, SpoolErrno> {
        locked {
            switch mode {
            case .directory:
                return directories.contains(path) ? .success(newDescriptor(.directory(path))) : .failure(SpoolErrno(ENOENT))
            case .readOnly:
                guard let inode = lookup(path) else { return .failure(SpoolErrno(ENOENT)) }
                return .success(newDescriptor(.file(inode)))
            case .createExclusive, .replace, .lockFile:
                guard directories.contains(parent(of: path)) else { return .failure(SpoolErrno(ENOENT)) }
                if mode == .createExclusive, lookup(path) != nil { return .failure(SpoolErrno(EEXIST)) }
                if mode == .createExclusive, shouldFail(.create) { return .failure(SpoolErrno(ENOSPC)) }
                let inode = lookup(path) ?? Inode()
                names[parent(of: path), default: [:]][path] = inode
                if mode == .replace { inode.data = [] }
                return .success(newDescriptor(.file(inode)))
            }
        }
    }

    func close(_ descriptor: Int32) {
        locked {
            guard let handle = handles.removeValue(forKey: descriptor) else { return }
            if case .file(let inode) = handle, lockHolders[ObjectIdentifier(inode)] == descriptor {
                lockHolders.removeValue(forKey: ObjectIdentifier(inode))
            }
        }
    }

    func pwrite(_ descriptor: Int32, _ bytes: UnsafeRawBufferPointer, at offset: Int64) -> Result<Int, SpoolErrno> {
        locked {
            guard let inode = fileInode(descriptor) else { return .failure(SpoolErrno(EBADF)) }
            var count = bytes.count
            var failure: SpoolErrno?
            if diskFullArmed {
                diskFullArmed = false
                return .failure(SpoolErrno(ENOSPC))
            }
            if shouldFail(.write) {
                // Some bytes reach the file, then the disk is full: either a short count now and
                // ENOSPC on the retry, or ENOSPC at once.
                count = bytes.isEmpty ? 0 : Int.random(in: 0..<bytes.count, using: &rng)
                if count > 0, Bool.random(using: &rng) {
                    diskFullArmed = true
                } else {
                    failure = SpoolErrno(ENOSPC)
                }
            }
            let start = Int(offset)
            if inode.data.count < start + count { inode.data += [UInt8](repeating: 0, count: start + count - inode.data.count) }
            inode.data.replaceSubrange(start..<start + count, with: bytes[0..<count])
            if let failure { return .failure(failure) }
            return .success(count)
        }
    }

    func pread(_ descriptor: Int32, into buffer: UnsafeMutableRawBufferPointer, at offset: Int64) -> Result<Int, SpoolErrno> {
        locked {
            guard let inode = fileInode(descriptor) else { return .failure(SpoolErrno(EBADF)) }
            let start = Int(offset)
            guard start < inode.data.count else { return .success(0) }
            let count = min(buffer.count, inode.data.count - start)
            inode.data.withUnsafeBytes { data in
                buffer.copyMemory(from: UnsafeRawBufferPointer(rebasing: data[start..<start + count]))
            }
            return .success(count)
        }
    }

    func fsync(_ descriptor: Int32) -> Result<Void, SpoolErrno> {
        locked {
            switch handles[descriptor] {
            case nil:
                return .failure(SpoolErrno(EBADF))
            case .directory(let path):
                if shouldFail(.directorySync) { return .failure(SpoolErrno(EIO)) }
                durableNames[path] = names[path]
                return .success(())
            case .file(let inode):
                if shouldFail(.fileSync) {
                    if inode.data.count > inode.durable.count, Bool.random(using: &rng) {
                        inode.abandoned.append(inode.durable.count..<inode.data.count)
                    }
                    return .failure(SpoolErrno(EIO))
                }
                var disk = inode.data
                for range in inode.abandoned {
                    for index in range where index < disk.count { disk[index] = index < inode.durable.count ? inode.durable[index] : 0 }
                }
                inode.abandoned = []
                inode.durable = disk
                return .success(())
            }
        }
    }

    func ftruncate(_ descriptor: Int32, to size: Int64) -> Result<Void, SpoolErrno> {
        locked {
            guard let inode = fileInode(descriptor) else { return .failure(SpoolErrno(EBADF)) }
            if shouldFail(.truncate) { return .failure(SpoolErrno(EIO)) }
            let size = Int(size)
            inode.abandoned = inode.abandoned.compactMap { range in range.lowerBound < size ? range.lowerBound..<min(range.upperBound, size) : nil }
            if inode.data.count > size {
                inode.data.removeLast(inode.data.count - size)
            } else {
                inode.data += [UInt8](repeating: 0, count: size - inode.data.count)
            }
            return .success(())
        }
    }

    func unlink(_ path: String) -> Result<Void, SpoolErrno> {
        locked { names[parent(of: path)]?.removeValue(forKey: path) != nil ? .success(()) : .failure(SpoolErrno(ENOENT)) }
    }

    func listDirectory(_ path: String) -> Result<[String], SpoolErrno> {
        locked {
            guard directories.contains(path) else { return .failure(SpoolErrno(ENOENT)) }
            let files = (names[path] ?? [:]).keys.map { String($0.dropFirst(path.count + 1)) }
            let subdirectories = directories.filter { $0 != path && parent(of: $0) == path }.map { String($0.dropFirst(path.count + 1)) }
            return .success(files + subdirectories)
        }
    }

    /// The next `times` lock attempts fail with `EWOULDBLOCK` (a holder letting go).
    func refuseLock(times: Int) { locked { lockRefusals = times } }

    func lockExclusive(_ descriptor: Int32) -> Result<Void, SpoolErrno> {
        locked {
            guard let inode = fileInode(descriptor) else { return .failure(SpoolErrno(EBADF)) }
            if lockRefusals > 0 {
                lockRefusals -= 1
                return .failure(SpoolErrno(EWOULDBLOCK))
            }
            if let holder = lockHolders[ObjectIdentifier(inode)], holder != descriptor { return .failure(SpoolErrno(EWOULDBLOCK)) }
            lockHolders[ObjectIdentifier(inode)] = descriptor
            return .success(())
        }
    }
}
