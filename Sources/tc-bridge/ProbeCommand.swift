import ArgumentParser
import TCBridge

#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

/// `tc-bridge probe`: asks a running bridge on this host whether it is ready (`GET /ready`, or
/// another path) and exits 0 on a 2xx answer, 1 otherwise. For container health checks: the image
/// needs no curl. Plain HTTP/1.1 over a loopback socket, with a deadline.
struct ProbeCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "probe",
        abstract: "Exit 0 when the local bridge answers GET /ready (or --path) with 2xx; for HEALTHCHECK.")

    @Option(help: "Port of the bridge (env: TC_BRIDGE_PORT; default 8080).")
    var port: Int?

    @Option(help: "Path to ask (default /ready).")
    var path = "/ready"

    @Option(help: "Seconds to wait for the answer (default 2).")
    var timeout = 2.0

    func run() throws {
        let port = try Environment.resolveInt(port, env: "TC_BRIDGE_PORT", default: 8080)
        guard (1...65535).contains(port) else { throw ValidationError("port must be 1-65535") }
        guard (0.1...60).contains(timeout) else { throw ValidationError("timeout must be 0.1-60 seconds") }
        guard path.hasPrefix("/"), !path.contains(where: { $0 == "\r" || $0 == "\n" || $0 == " " }) else {
            throw ValidationError("path must start with / and hold no spaces or line breaks")
        }
        switch Self.status(port: port, path: path, timeout: timeout) {
        case .some(let status) where (200..<300).contains(status):
            print("ready: \(status)")
        case .some(let status):
            print("not ready: \(status)")
            throw ExitCode.failure
        case .none:
            print("no answer from 127.0.0.1:\(port)")
            throw ExitCode.failure
        }
    }

    /// The HTTP status the bridge answers `path` with, or `nil` (no connection, no answer in time).
    static func status(port: Int, path: String, timeout: Double) -> Int? {
        #if canImport(Glibc)
        let socketType = Int32(SOCK_STREAM.rawValue)
        #else
        let socketType = SOCK_STREAM
        #endif
        let descriptor = socket(AF_INET, socketType, 0)
        guard descriptor >= 0 else { return nil }
        defer { close(descriptor) }
        // (`timeout` is checked to lie in 0.1...60 before this.)
        let microseconds = Int((timeout * 1_000_000).rounded())
        var limit = timeval()
        limit.tv_sec = .init(microseconds / 1_000_000)
        limit.tv_usec = .init(microseconds % 1_000_000)
        for option in [SO_RCVTIMEO, SO_SNDTIMEO] {
            _ = setsockopt(descriptor, SOL_SOCKET, option, &limit, socklen_t(MemoryLayout<timeval>.size))
        }
        var address = sockaddr_in()
        address.sin_family = sa_family_t(AF_INET)
        address.sin_port = in_port_t(UInt16(port).bigEndian)
        address.sin_addr.s_addr = in_addr_t(UInt32(0x7F00_0001).bigEndian)
        let connected = withUnsafePointer(to: &address) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { connect(descriptor, $0, socklen_t(MemoryLayout<sockaddr_in>.size)) }
        }
        guard connected == 0 else { return nil }
        let request = Array("GET \(path) HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n".utf8)
        guard request.withUnsafeBytes({ send(descriptor, $0.baseAddress, $0.count, 0) }) == request.count else { return nil }
        var buffer = [UInt8](repeating: 0, count: 64)
        var received = 0
        while received < 12 {
            let count = buffer.withUnsafeMutableBytes { raw -> Int in
                guard let base = raw.baseAddress else { return -1 }
                return recv(descriptor, base + received, raw.count - received, 0)
            }
            guard count > 0 else { break }
            received += count
        }
        return ProbeStatus.parse(Array(buffer[0..<received]))
    }
}
