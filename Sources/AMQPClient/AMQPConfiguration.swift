import HexCoding

/// Where and how to connect to a RabbitMQ broker.
///
/// Build it from an AMQP URI (`amqp://user:pass@host:port/vhost`, `amqps://` for TLS) with
/// ``init(url:)``, then adjust the documented defaults. The password is never part of
/// ``description`` or ``redactedURL``, so a configuration can be logged safely.
public struct AMQPConnectionConfiguration: Sendable, Equatable, CustomStringConvertible {
    /// TLS settings used when the URL scheme is `amqps`.
    public struct TLS: Sendable, Equatable {
        /// PEM file with the certificate authorities that sign the broker's certificate.
        /// rabbitmq-c 0.11 loads no CA file by itself, so without one verification fails.
        public var caCertificatePath: String?
        /// PEM client certificate and key for mutual TLS.
        public var clientCertificatePath: String?
        public var clientKeyPath: String?
        /// Verify the broker's certificate chain (default `true`).
        public var verifyPeer: Bool
        /// Verify that the certificate names the host (default `true`). rabbitmq-c 0.11 matches DNS
        /// names only, so connect by a name the certificate lists, not by IP address.
        public var verifyHostname: Bool

        public init(
            caCertificatePath: String? = nil,
            clientCertificatePath: String? = nil,
            clientKeyPath: String? = nil,
            verifyPeer: Bool = true,
            verifyHostname: Bool = true
        ) {
            self.caCertificatePath = caCertificatePath
            self.clientCertificatePath = clientCertificatePath
            self.clientKeyPath = clientKeyPath
            self.verifyPeer = verifyPeer
            self.verifyHostname = verifyHostname
        }
    }

    public var host: String
    public var port: Int
    public var virtualHost: String
    public var username: String
    public var password: String
    /// `nil` for plain TCP; set for `amqps`.
    public var tls: TLS?
    /// Heartbeat interval negotiated with the broker (default 30 s; whole seconds, clamped to
    /// 0...65,535, the protocol's range; 0 asks for none). The owning thread keeps servicing
    /// heartbeats while idle.
    public var heartbeat: Duration
    /// Limit for TCP connect plus the AMQP handshake (default 5 s).
    public var connectTimeout: Duration
    /// Limit for each synchronous AMQP method (declare, bind, confirm.select...; default 5 s).
    public var rpcTimeout: Duration
    /// Shown in the broker's management UI as the connection name.
    public var connectionName: String

    public init(
        host: String = "127.0.0.1",
        port: Int? = nil,
        virtualHost: String = "/",
        username: String = "guest",
        password: String = "guest",
        tls: TLS? = nil,
        heartbeat: Duration = .seconds(30),
        connectTimeout: Duration = .seconds(5),
        rpcTimeout: Duration = .seconds(5),
        connectionName: String = "tc-bridge"
    ) {
        self.host = host
        self.port = port ?? (tls == nil ? 5672 : 5671)
        self.virtualHost = virtualHost
        self.username = username
        self.password = password
        self.tls = tls
        self.heartbeat = heartbeat
        self.connectTimeout = connectTimeout
        self.rpcTimeout = rpcTimeout
        self.connectionName = connectionName
    }

    /// Parses an AMQP URI as RabbitMQ documents it: `amqp[s]://[user[:pass]@]host[:port][/vhost]`.
    /// Userinfo and vhost are percent-decoded (`%2F` is the vhost `/`); an absent vhost means `/`.
    /// - Throws: ``AMQPConfigurationError`` naming what is wrong, never echoing the password.
    public init(url: String) throws(AMQPConfigurationError) {
        let tls: TLS?
        let rest: Substring
        if url.hasPrefix("amqp://") {
            tls = nil
            rest = url.dropFirst("amqp://".count)
        } else if url.hasPrefix("amqps://") {
            tls = TLS()
            rest = url.dropFirst("amqps://".count)
        } else {
            throw .invalidURL("scheme must be amqp:// or amqps://")
        }
        if rest.contains("?") || rest.contains("#") {
            throw .invalidURL("query parameters are not supported; use the configuration fields")
        }
        let authority: Substring
        var vhost = "/"
        if let slash = rest.firstIndex(of: "/") {
            authority = rest[..<slash]
            let rawVhost = rest[rest.index(after: slash)...]
            if !rawVhost.isEmpty {
                guard let decoded = percentDecoded(rawVhost) else { throw .invalidURL("bad percent-encoding in vhost") }
                vhost = decoded
            }
        } else {
            authority = rest
        }
        var username = "guest"
        var password = "guest"
        var hostPort = authority
        if let at = authority.lastIndex(of: "@") {
            let userinfo = authority[..<at]
            hostPort = authority[authority.index(after: at)...]
            let parts = userinfo.split(separator: ":", maxSplits: 1, omittingEmptySubsequences: false)
            guard let user = percentDecoded(parts[0]) else { throw .invalidURL("bad percent-encoding in user name") }
            username = user
            if parts.count == 2 {
                guard let pass = percentDecoded(parts[1]) else { throw .invalidURL("bad percent-encoding in password") }
                password = pass
            }
        }
        var host = String(hostPort)
        var port: Int? = nil
        if hostPort.hasPrefix("[") {
            guard let close = hostPort.firstIndex(of: "]") else { throw .invalidURL("unterminated IPv6 address") }
            host = String(hostPort[hostPort.index(after: hostPort.startIndex)..<close])
            let after = hostPort[hostPort.index(after: close)...]
            if after.hasPrefix(":") {
                guard let p = Int(after.dropFirst()), (1...65535).contains(p) else { throw .invalidURL("port must be 1-65535") }
                port = p
            } else if !after.isEmpty {
                throw .invalidURL("unexpected text after IPv6 address")
            }
        } else if let colon = hostPort.lastIndex(of: ":") {
            host = String(hostPort[..<colon])
            let portText = hostPort[hostPort.index(after: colon)...]
            if !portText.isEmpty {  // "host:" means the scheme's default port
                guard let p = Int(portText), (1...65535).contains(p) else { throw .invalidURL("port must be 1-65535") }
                port = p
            }
        }
        if host.isEmpty { host = "localhost" }
        self.init(host: host, port: port, virtualHost: vhost, username: username, password: password, tls: tls)
    }

    /// The connection URL with the password replaced by `***`.
    public var redactedURL: String {
        let scheme = tls == nil ? "amqp" : "amqps"
        let hostPart = host.contains(":") ? "[\(host)]" : host
        return "\(scheme)://\(percentEncoded(username)):***@\(hostPart):\(port)/\(percentEncoded(virtualHost))"
    }

    public var description: String { redactedURL }
}

/// A configuration that cannot be used; the message never contains a secret.
public enum AMQPConfigurationError: Error, Equatable, CustomStringConvertible {
    case invalidURL(String)

    public var description: String {
        switch self {
        case .invalidURL(let reason): "invalid AMQP URL: \(reason)"
        }
    }
}

private func percentDecoded(_ text: Substring) -> String? {
    var bytes: [UInt8] = []
    bytes.reserveCapacity(text.utf8.count)
    var iterator = text.utf8.makeIterator()
    while let byte = iterator.next() {
        if byte == UInt8(ascii: "%") {
            guard let high = iterator.next().flatMap(Hex.value(of:)), let low = iterator.next().flatMap(Hex.value(of:)) else {
                return nil
            }
            bytes.append(high << 4 | low)
        } else {
            bytes.append(byte)
        }
    }
    return String(validating: bytes, as: UTF8.self)
}

private func percentEncoded(_ text: String) -> String {
    var out = ""
    for byte in text.utf8 {
        switch byte {
        case UInt8(ascii: "a")...UInt8(ascii: "z"), UInt8(ascii: "A")...UInt8(ascii: "Z"),
            UInt8(ascii: "0")...UInt8(ascii: "9"), UInt8(ascii: "-"), UInt8(ascii: "."), UInt8(ascii: "_"),
            UInt8(ascii: "~"):
            out.unicodeScalars.append(Unicode.Scalar(byte))
        default:
            let hex = Array("0123456789ABCDEF".unicodeScalars)
            out.unicodeScalars.append("%")
            out.unicodeScalars.append(hex[Int(byte >> 4)])
            out.unicodeScalars.append(hex[Int(byte & 0xF)])
        }
    }
    return out
}
