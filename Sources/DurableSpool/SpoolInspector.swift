#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

/// Read-only view of a spool directory, for operator tools. Opens files for reading only and takes
/// no lock, so it is safe beside a live bridge, which may meanwhile forward and delete what it shows:
/// a segment stays on disk until every record in it is confirmed, so some listed records may already
/// be delivered (a crash would forward them again: at least once).
public struct SpoolInspector: Sendable {
    /// One segment file.
    public struct Segment: Sendable, Equatable {
        public var sequence: UInt64
        public var path: String
        public var bytes: Int
        /// Intact records, in order.
        public var records: [Record]
        /// Byte spans that are not intact records (damage, or a write torn by a crash).
        public var damagedSpans: Int
    }

    /// One intact record: where it lies and its payload.
    public struct Record: Sendable, Equatable {
        public var offset: Int
        public var payload: [UInt8]
    }

    /// A record set aside in `corrupt/` (damaged, or refused by the broker).
    public struct SetAside: Sendable, Equatable {
        public var path: String
        public var bytes: [UInt8]
    }

    public let directory: String

    /// The payload of a set-aside file: the record's payload when the file holds a framed record,
    /// else the file's bytes as they are.
    public static func payload(ofFramedOrRaw data: UnsafeRawBufferPointer) -> [UInt8] {
        if case .record(let range, _) = RecordFormat.parse(data, at: 0) { return Array(data[range]) }
        return Array(data)
    }

    public init(directory: String) {
        self.directory = directory
    }

    /// The segments, oldest first. Throws ``SpoolInspectorError`` when the directory cannot be read.
    public func segments() throws(SpoolInspectorError) -> [Segment] {
        try names(in: directory).compactMap { name -> (UInt64, String)? in
            guard name.hasPrefix("segment-"), name.hasSuffix(".spool"),
                let sequence = UInt64(name.dropFirst("segment-".count).dropLast(".spool".count))
            else { return nil }
            return (sequence, directory + "/" + name)
        }
        .sorted { $0.0 < $1.0 }
        .map { sequence, path throws(SpoolInspectorError) in
            let bytes = try Self.contents(of: path)
            var records: [Record] = []
            var damaged = 0
            bytes.withUnsafeBytes { data in
                var offset = 0
                while offset < data.count {
                    switch RecordFormat.parse(data, at: offset) {
                    case .record(let range, let end):
                        records.append(Record(offset: offset, payload: Array(data[range])))
                        offset = end
                    case .damaged, .truncated:
                        damaged += 1
                        guard let next = RecordFormat.resynchronise(data, after: offset) else { offset = data.count; break }
                        offset = next
                    }
                }
            }
            return Segment(sequence: sequence, path: path, bytes: bytes.count, records: records, damagedSpans: damaged)
        }
    }

    /// Records set aside in `corrupt/` (not `corrupt/replayed/`), oldest name first.
    public func setAside() throws(SpoolInspectorError) -> [SetAside] {
        let corrupt = directory + "/corrupt"
        guard access(corrupt, F_OK) == 0 else { return [] }
        return try names(in: corrupt).filter { $0.hasSuffix(".bin") }.sorted().map { name throws(SpoolInspectorError) in
            SetAside(path: corrupt + "/" + name, bytes: try Self.contents(of: corrupt + "/" + name))
        }
    }

    private func names(in path: String) throws(SpoolInspectorError) -> [String] {
        guard let handle = opendir(path) else { throw .unreadable(path: path, reason: String(cString: strerror(errno))) }
        defer { closedir(handle) }
        var names: [String] = []
        while let entry = readdir(handle) {
            let name = withUnsafePointer(to: entry.pointee.d_name) {
                $0.withMemoryRebound(to: CChar.self, capacity: 256) { String(cString: $0) }
            }
            if name != ".", name != ".." { names.append(name) }
        }
        return names
    }

    static func contents(of path: String) throws(SpoolInspectorError) -> [UInt8] {
        let descriptor = open(path, O_RDONLY | O_CLOEXEC)
        guard descriptor >= 0 else { throw .unreadable(path: path, reason: String(cString: strerror(errno))) }
        defer { close(descriptor) }
        var result: [UInt8] = []
        var buffer = [UInt8](repeating: 0, count: 1 << 16)
        while true {
            let count = buffer.withUnsafeMutableBytes { read(descriptor, $0.baseAddress, $0.count) }
            if count < 0 {
                if errno == EINTR { continue }
                throw .unreadable(path: path, reason: String(cString: strerror(errno)))
            }
            if count == 0 { return result }
            result.append(contentsOf: buffer[0..<count])
        }
    }
}

public enum SpoolInspectorError: Error, Sendable, Equatable, CustomStringConvertible {
    case unreadable(path: String, reason: String)

    public var description: String {
        switch self {
        case .unreadable(let path, let reason): "cannot read \(path): \(reason)"
        }
    }
}
