import AMQPClient
import ArgumentParser
import Hummingbird
import Logging
import TCBridge
import TutorCruncher

#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

/// `tc-bridge serve`: runs the receiver until SIGTERM/SIGINT.
struct ServeCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "serve",
        abstract: "Receive TutorCruncher webhooks and publish them to RabbitMQ.",
        discussion: """
            Every option can also be set through the environment variable named in its help; the flag wins.
            The private API key comes from TC_PRIVATE_KEY or a key file, never from a flag value.
            """
    )

    @Option(help: "Interface to listen on (env: TC_BRIDGE_HOST; default 127.0.0.1).")
    var host: String?

    @Option(help: "Port to listen on (env: TC_BRIDGE_PORT; default 8080).")
    var port: Int?

    @Option(help: "Broker URL, amqp:// or amqps:// (env: AMQP_URL; default amqp://guest:guest@127.0.0.1:5672/%2F). Prefer the environment variable when the URL holds a password.")
    var amqpURL: String?

    @Option(help: "CA certificates (PEM) that sign the broker's certificate, for amqps:// (env: AMQP_CA_FILE).")
    var amqpCAFile: String?

    @Option(help: "Topic exchange to publish to (env: TC_BRIDGE_EXCHANGE; default tutorcruncher).")
    var exchange: String?

    @Option(help: "Largest accepted body in bytes; larger requests get 413 (env: TC_BRIDGE_MAX_BODY_BYTES; default 16777216).")
    var maxBodyBytes: Int?

    @Option(help: "Seconds to wait for the broker's confirm before answering 503 (env: TC_BRIDGE_CONFIRM_TIMEOUT; default 5).")
    var confirmTimeout: Int?

    @Option(help: "File holding the private API key, one key per line during a rotation (env: TC_PRIVATE_KEY_FILE). Default: env TC_PRIVATE_KEY.")
    var privateKeyFile: String?

    @Option(help: "trace, debug, info, notice, warning, error or critical (env: TC_BRIDGE_LOG_LEVEL; default info).")
    var logLevel: String?

    func run() async throws {
        let keys = try Environment.signingKeys(file: privateKeyFile)
        let levelName = Environment.resolve(logLevel, env: "TC_BRIDGE_LOG_LEVEL", default: "info")
        guard let level = Logger.Level(rawValue: levelName) else {
            throw ValidationError("unknown log level \"\(levelName)\"")
        }
        var logger = Logger(label: "tc-bridge")
        logger.logLevel = level

        let url = Environment.resolve(amqpURL, env: "AMQP_URL", default: "amqp://guest:guest@127.0.0.1:5672/%2F")
        var connection: AMQPConnectionConfiguration
        do {
            connection = try AMQPConnectionConfiguration(url: url)
        } catch {
            throw ValidationError("\(error)")
        }
        if let ca = amqpCAFile ?? Environment.value("AMQP_CA_FILE") {
            guard connection.tls != nil else { throw ValidationError("--amqp-ca-file needs an amqps:// URL") }
            connection.tls?.caCertificatePath = ca
        }
        let port = try Environment.resolveInt(port, env: "TC_BRIDGE_PORT", default: 8080)
        guard (0...65535).contains(port) else { throw ValidationError("port must be 0-65535") }
        let maxBody = try Environment.resolveInt(maxBodyBytes, env: "TC_BRIDGE_MAX_BODY_BYTES", default: 16 * 1024 * 1024)
        guard maxBody > 0 else { throw ValidationError("max body bytes must be positive") }
        let confirmSeconds = try Environment.resolveInt(confirmTimeout, env: "TC_BRIDGE_CONFIRM_TIMEOUT", default: 5)
        guard confirmSeconds > 0 else { throw ValidationError("confirm timeout must be positive") }

        let bridge = BridgeConfiguration(
            host: Environment.resolve(host, env: "TC_BRIDGE_HOST", default: "127.0.0.1"),
            port: port,
            exchange: Environment.resolve(exchange, env: "TC_BRIDGE_EXCHANGE", default: "tutorcruncher"),
            maxBodyBytes: maxBody,
            verifier: WebhookVerifier(keys: keys))
        let publisher = AMQPPublisher(
            configuration: AMQPPublisherConfiguration(
                connection: connection,
                exchanges: [AMQPExchangeDeclaration(name: bridge.exchange, kind: .topic, durable: true)],
                confirmTimeout: .seconds(confirmSeconds)),
            logger: logger)
        logger.info(
            "starting tc-bridge",
            metadata: ["broker": "\(connection.redactedURL)", "exchange": "\(bridge.exchange)", "keys": "\(keys.count)"])
        let app = buildApplication(
            configuration: bridge, publisher: publisher, services: [publisher], logger: logger,
            onListening: { port in
                // Unbuffered, so scripts and tests waiting for this line see it at once.
                let line = Array("tc-bridge listening on http://\(bridge.host):\(port)\n".utf8)
                _ = line.withUnsafeBytes { write(STDOUT_FILENO, $0.baseAddress, $0.count) }
            })
        try await app.runService()
        logger.info("tc-bridge stopped")
    }
}
