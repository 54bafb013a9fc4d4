import Metrics
import Prometheus
import TCBridgeContract
import AMQPClient
import ArgumentParser
import DurableSpool
import Hummingbird
import Logging
import TCBridge
import TutorCruncher
import UnixSignals
import TutorCruncherSignature

#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

/// `tc-bridge serve`: runs the receiver until SIGTERM/SIGINT; SIGHUP reloads the key file.
struct ServeCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "serve",
        abstract: "Receive TutorCruncher webhooks and publish them to RabbitMQ.",
        discussion: """
            Every option can also be set through the environment variable named in its help; the flag wins.
            The private API key comes from TC_PRIVATE_KEY or a key file, never from a flag value.
            SIGHUP re-reads the key file (a key from TC_PRIVATE_KEY cannot be reloaded).
            """
    )

    @Option(help: "Interface to listen on (env: TC_BRIDGE_HOST; default 127.0.0.1).")
    var host: String?

    @Option(help: "Port to listen on (env: TC_BRIDGE_PORT; default 8080).")
    var port: Int?

    @Option(help: "Broker URL, amqp:// or amqps://; repeat it for a cluster's nodes or standby brokers, preferred first (env: AMQP_URL, comma-separated; default amqp://guest:guest@127.0.0.1:5672/%2F). Prefer the environment variable when a URL holds a password.")
    var amqpURL: [String] = []

    @Option(help: "CA certificates (PEM) that sign the broker's certificate, for amqps:// (env: AMQP_CA_FILE).")
    var amqpCAFile: String?

    @Option(help: "Client certificate (PEM) for a broker that requires one, for amqps:// (env: AMQP_CLIENT_CERT_FILE); needs --amqp-client-key.")
    var amqpClientCert: String?

    @Option(help: "Private key (PEM) of the client certificate (env: AMQP_CLIENT_KEY_FILE).")
    var amqpClientKey: String?

    @Option(help: "Topic exchange to publish to (env: TC_BRIDGE_EXCHANGE; default tutorcruncher).")
    var exchange: String?

    @Option(help: "Largest accepted body in bytes; larger requests get 413 (env: TC_BRIDGE_MAX_BODY_BYTES; default 16777216).")
    var maxBodyBytes: Int?

    @Option(help: "Seconds to wait for the broker's confirm before spooling instead, e.g. 2 or 0.5 (env: TC_BRIDGE_CONFIRM_TIMEOUT; default 2).")
    var confirmTimeout: Double?

    @Option(help: "Directory of the durable spool used while the broker is unavailable (env: TC_BRIDGE_SPOOL_DIR; default /var/lib/tc-bridge/spool).")
    var spoolDir: String?

    @Option(help: "Largest spool size in bytes; beyond it requests get 503 (env: TC_BRIDGE_SPOOL_MAX_BYTES; default 1073741824).")
    var spoolMaxBytes: Int?

    @Option(help: "Seconds an identical body is answered 200 without publishing again, remembered across restarts in <spool-dir>/dedup.log; at least --max-age + --max-future-skew while the replay check is on (env: TC_BRIDGE_DEDUP_WINDOW; default that sum, 3900; 0 disables, only with --max-age 0).")
    var dedupWindow: Double?

    @Option(help: "Signed bodies whose request_time is more than this many seconds old get 403; 0 disables the replay check (env: TC_BRIDGE_MAX_AGE; default 3600; the sender's retries reuse the original time for about 19 minutes).")
    var maxAge: Int?

    @Option(help: "Signed bodies whose request_time is more than this many seconds in the future get 403 (env: TC_BRIDGE_MAX_FUTURE_SKEW; default 300).")
    var maxFutureSkew: Int?

    @Option(help: "Seconds a graceful shutdown (SIGTERM, SIGINT) may take before the process exits anyway with status 70; answered events are already confirmed or spooled (env: TC_BRIDGE_SHUTDOWN_DEADLINE; default 30).")
    var shutdownDeadline: Double?

    @Option(help: "Alternate exchange and queue keeping events no service is bound for; 'none' disables (env: TC_BRIDGE_ALTERNATE_EXCHANGE; default <exchange>.unroutable).")
    var alternateExchange: String?

    @Option(help: "Most messages the unroutable queue keeps, oldest dropped first (env: TC_BRIDGE_UNROUTABLE_MAX_LENGTH; default 100000).")
    var unroutableMaxLength: Int?

    @Option(help: "classic or quorum: the unroutable queue's type; quorum for a cluster, so it survives a node's loss (env: TC_BRIDGE_UNROUTABLE_QUEUE_TYPE; default classic; applies when the queue is created).")
    var unroutableQueueType: String?

    @Option(help: "Seconds from a request's first byte to its complete head (env: TC_BRIDGE_HEADER_TIMEOUT; default 5).")
    var headerTimeout: Double?

    @Option(help: "Seconds from a request's head to the end of its body; slower clients are closed (env: TC_BRIDGE_BODY_TIMEOUT; default 10).")
    var bodyTimeout: Double?

    @Option(help: "Seconds a keep-alive connection may stay open with no request (env: TC_BRIDGE_IDLE_TIMEOUT; default 15).")
    var idleTimeout: Double?

    @Option(help: "Most open connections; beyond it new ones get 503 and are closed (env: TC_BRIDGE_MAX_CONNECTIONS; default 1024).")
    var maxConnections: Int?

    @Option(help: "Most open connections from one client address (env: TC_BRIDGE_MAX_CONNECTIONS_PER_CLIENT; default 256; behind a proxy, raise it to --max-connections).")
    var maxConnectionsPerClient: Int?

    @Option(help: "Bytes of request bodies not yet verified, across all requests; beyond it 503 with Retry-After (env: TC_BRIDGE_UNVERIFIED_BODY_BUDGET; default 67108864).")
    var unverifiedBodyBudget: Int?

    @Option(help: "File holding the private API key, one key per line during a rotation (env: TC_PRIVATE_KEY_FILE). Default: env TC_PRIVATE_KEY.")
    var privateKeyFile: String?

    @Option(help: "trace, debug, info, notice, warning, error or critical (env: TC_BRIDGE_LOG_LEVEL; default info).")
    var logLevel: String?

    @Option(help: "text or json: one JSON object per log line, for log shippers (env: TC_BRIDGE_LOG_FORMAT; default text).")
    var logFormat: String?

    @Option(help: "off or otlp: a span per webhook request, exported over OTLP/HTTP to OTEL_EXPORTER_OTLP_ENDPOINT (default http://localhost:4318), its context carried to every message as a W3C traceparent header (env: TC_BRIDGE_TRACING; default off). The standard OTEL_* variables apply.")
    var tracing: String?

    @Flag(help: "Accept a private key file (re-read on SIGHUP) that group or others may access (env: TC_BRIDGE_ALLOW_INSECURE_KEY_FILE=1).")
    var allowInsecureKeyFile = false

    func run() async throws {
        let allowInsecure = try allowInsecureKeyFile || Environment.flag("TC_BRIDGE_ALLOW_INSECURE_KEY_FILE")
        let (keys, keySource) = try Environment.signingKeys(file: privateKeyFile, allowInsecureFile: allowInsecure)
        let levelName = Environment.resolve(logLevel, env: "TC_BRIDGE_LOG_LEVEL", default: "info")
        guard let level = Logger.Level(rawValue: levelName) else {
            throw ValidationError("unknown log level \"\(levelName)\"")
        }
        let formatName = Environment.resolve(logFormat, env: "TC_BRIDGE_LOG_FORMAT", default: "text")
        guard let format = BridgeLogHandler.Format(rawValue: formatName) else {
            throw ValidationError("unknown log format \"\(formatName)\" (text or json)")
        }
        LoggingSystem.bootstrap { label in
            var handler = BridgeLogHandler(label: label, format: format)
            handler.logLevel = level
            return handler
        }
        // Metrics go to a Prometheus registry served at GET /metrics.
        let registry = PrometheusCollectorRegistry()
        var metricsFactory = PrometheusMetricsFactory(registry: registry)
        let latencyBuckets: [Duration] = [
            .microseconds(500), .milliseconds(1), .milliseconds(2), .milliseconds(5), .milliseconds(10), .milliseconds(25),
            .milliseconds(50), .milliseconds(100), .milliseconds(250), .milliseconds(500), .seconds(1), .seconds(2.5),
            .seconds(5), .seconds(8),
        ]
        metricsFactory.durationHistogramBuckets = [
            "tcbridge_request_duration_seconds": latencyBuckets, "tcbridge_publish_confirm_duration_seconds": latencyBuckets,
        ]
        MetricsSystem.bootstrap(metricsFactory)
        var logger = Logger(label: "tc-bridge")
        logger.logLevel = level
        defer { BridgeLogHandler.flush() }
        let keyring = SigningKeyring(WebhookVerifier(keys: keys))
        // Installed first, so a SIGHUP during start-up never hits the default action (exit).
        let hangups = await UnixSignalsSequence(trapping: .sighup)
        let reloader = Task { [logger] in
            for await _ in hangups { Self.reloadKeys(from: keySource, into: keyring, logger: logger) }
        }
        defer { reloader.cancel() }
        ShutdownDeadline.arm(
            limit: try Environment.resolveSeconds(shutdownDeadline, env: "TC_BRIDGE_SHUTDOWN_DEADLINE", default: 30), logger: logger)

        let urls = amqpURL.isEmpty
            ? (Environment.value("AMQP_URL") ?? "amqp://guest:guest@127.0.0.1:5672/%2F").split(separator: ",").map {
                String($0.drop(while: \.isWhitespace).reversed().drop(while: \.isWhitespace).reversed())
            }.filter { !$0.isEmpty }
            : amqpURL
        let caFile = amqpCAFile ?? Environment.value("AMQP_CA_FILE")
        let clientCert = amqpClientCert ?? Environment.value("AMQP_CLIENT_CERT_FILE")
        let clientKey = amqpClientKey ?? Environment.value("AMQP_CLIENT_KEY_FILE")
        guard (clientCert == nil) == (clientKey == nil) else {
            throw ValidationError("--amqp-client-cert and --amqp-client-key go together")
        }
        var connections: [AMQPConnectionConfiguration] = []
        for url in urls {
            var connection: AMQPConnectionConfiguration
            do {
                connection = try AMQPConnectionConfiguration(url: url)
            } catch {
                throw ValidationError("\(error)")
            }
            // TLS settings apply to every amqps:// broker.
            if let caFile {
                guard connection.tls != nil else { throw ValidationError("--amqp-ca-file needs an amqps:// URL") }
                connection.tls?.caCertificatePath = caFile
            }
            if let clientCert, let clientKey {
                guard connection.tls != nil else { throw ValidationError("--amqp-client-cert needs an amqps:// URL") }
                connection.tls?.clientCertificatePath = clientCert
                connection.tls?.clientKeyPath = clientKey
            }
            connections.append(connection)
        }
        guard let connection = connections.first else { throw ValidationError("no broker URL given") }
        let port = try Environment.resolveInt(port, env: "TC_BRIDGE_PORT", default: 8080)
        guard (0...65535).contains(port) else { throw ValidationError("port must be 0-65535") }
        let maxBody = try Environment.resolveInt(maxBodyBytes, env: "TC_BRIDGE_MAX_BODY_BYTES", default: 16 * 1024 * 1024)
        guard maxBody > 0 else { throw ValidationError("max body bytes must be positive") }
        let confirmSeconds = try Environment.resolveDouble(confirmTimeout, env: "TC_BRIDGE_CONFIRM_TIMEOUT", default: 2)
        guard confirmSeconds > 0, confirmSeconds < 8 else {
            throw ValidationError("confirm timeout must be above 0 and under TutorCruncher's 8 s request timeout")
        }
        let maxAgeSeconds = try Environment.resolveInt(maxAge, env: "TC_BRIDGE_MAX_AGE", default: 3600)
        let skewSeconds = try Environment.resolveInt(maxFutureSkew, env: "TC_BRIDGE_MAX_FUTURE_SKEW", default: 300)
        let longest = 30 * 86400
        guard (0...longest).contains(maxAgeSeconds), (0...longest).contains(skewSeconds) else {
            throw ValidationError("max age and max future skew must be 0-\(longest) seconds")
        }
        let replay = maxAgeSeconds > 0 ? ReplayWindow(maxAge: maxAgeSeconds, maxFutureSkew: skewSeconds) : nil
        let dedupSeconds = try Environment.resolveDouble(dedupWindow, env: "TC_BRIDGE_DEDUP_WINDOW", default: Double(replay?.span ?? 3600))
        guard dedupSeconds >= 0, dedupSeconds <= Double(2 * longest) else { throw ValidationError("dedup window must be 0-\(2 * longest) seconds") }
        if let replay, dedupSeconds < Double(replay.span) {
            // A body is accepted up to max-age + max-future-skew after it was first seen; a shorter
            // dedup window would let a captured request be published twice.
            throw ValidationError(
                "dedup window (\(dedupSeconds) s) must be at least --max-age + --max-future-skew (\(replay.span) s), "
                    + "or a captured request could be published twice; raise --dedup-window, or lower --max-age (0 turns the replay check off)")
        }
        let spoolLimit = try Environment.resolveInt(spoolMaxBytes, env: "TC_BRIDGE_SPOOL_MAX_BYTES", default: 1 << 30)
        guard spoolLimit > 0 else { throw ValidationError("spool max bytes must be positive") }
        let unroutableLimit = try Environment.resolveInt(unroutableMaxLength, env: "TC_BRIDGE_UNROUTABLE_MAX_LENGTH", default: 100_000)
        let unroutableType = Environment.resolve(unroutableQueueType, env: "TC_BRIDGE_UNROUTABLE_QUEUE_TYPE", default: "classic")
        guard ["classic", "quorum"].contains(unroutableType) else { throw ValidationError("unroutable queue type must be classic or quorum") }
        guard unroutableLimit > 0 else { throw ValidationError("unroutable max length must be positive") }
        let exchangeName = Environment.resolve(exchange, env: "TC_BRIDGE_EXCHANGE", default: BridgeContract.defaultExchange)
        let alternate = Environment.resolve(
            alternateExchange, env: "TC_BRIDGE_ALTERNATE_EXCHANGE", default: BridgeTopology.defaultAlternateExchange(for: exchangeName))
        let topology = BridgeTopology(
            exchange: exchangeName, alternateExchange: alternate == "none" ? nil : alternate, unroutableMaxLength: unroutableLimit,
            unroutableQueueType: unroutableType)

        let limits = ConnectionLimits(
            headerTimeout: try Environment.resolveSeconds(headerTimeout, env: "TC_BRIDGE_HEADER_TIMEOUT", default: 5),
            bodyTimeout: try Environment.resolveSeconds(bodyTimeout, env: "TC_BRIDGE_BODY_TIMEOUT", default: 10),
            idleTimeout: try Environment.resolveSeconds(idleTimeout, env: "TC_BRIDGE_IDLE_TIMEOUT", default: 15),
            maxConnections: try Environment.resolveInt(maxConnections, env: "TC_BRIDGE_MAX_CONNECTIONS", default: 1024),
            maxConnectionsPerClient: try Environment.resolveInt(
                maxConnectionsPerClient, env: "TC_BRIDGE_MAX_CONNECTIONS_PER_CLIENT", default: 256),
            unverifiedBodyBudget: try Environment.resolveInt(
                unverifiedBodyBudget, env: "TC_BRIDGE_UNVERIFIED_BODY_BUDGET", default: 64 << 20))
        guard limits.maxConnections > 0, limits.maxConnectionsPerClient > 0 else {
            throw ValidationError("max connections (in all and per client) must be positive")
        }
        guard limits.unverifiedBodyBudget > 0 else { throw ValidationError("unverified body budget must be positive") }
        ProcessLimits.prepare(connections: limits.maxConnections, logger: logger)
        let tracingBackend = try BridgeTracing.make(
            mode: Environment.resolve(tracing, env: "TC_BRIDGE_TRACING", default: "off"), level: level, format: format, logger: logger)

        let bridge = BridgeConfiguration(
            host: Environment.resolve(host, env: "TC_BRIDGE_HOST", default: "127.0.0.1"),
            port: port,
            exchange: exchangeName,
            maxBodyBytes: maxBody,
            verifier: WebhookVerifier(keys: keys),
            dedupWindow: dedupSeconds > 0 ? .milliseconds(Int64(dedupSeconds * 1000)) : nil,
            limits: limits)
        let publisher = AMQPPublisher(
            configuration: {
                var configuration = AMQPPublisherConfiguration(
                    connection: connection,
                    exchanges: topology.exchanges,
                    queues: topology.queues,
                    confirmTimeout: .milliseconds(Int64(confirmSeconds * 1000)))
                configuration.failoverConnections = Array(connections.dropFirst())
                return configuration
            }(),
            logger: logger)
        let spool = DurableSpool(
            configuration: DurableSpoolConfiguration(
                directory: Environment.resolve(spoolDir, env: "TC_BRIDGE_SPOOL_DIR", default: "/var/lib/tc-bridge/spool"),
                maxBytes: Int64(spoolLimit)),
            logger: logger)
        if spool.isLockedByAnotherProcess {
            // Two bridges on one spool directory would forward and delete each other's records.
            throw ValidationError(
                "spool directory \(spool.configuration.directory) is in use by another tc-bridge process "
                    + "(\(spool.configuration.directory)/lock is locked); stop it, or give this one its own --spool-dir")
        }
        if let reason = spool.unavailableReason {
            // Recovery failed (the directory cannot be created or listed, or its lock cannot be taken,
            // e.g. ENOLCK on a file system without flock): a bridge started anyway could not survive a
            // broker outage, and without the lock nothing keeps a second bridge off these files.
            throw ValidationError("cannot use the spool directory: \(reason); fix it, or choose another --spool-dir")
        }
        let forwarder = SpoolForwarder(spool: spool, publisher: publisher, logger: logger)
        // Keys reloadable on SIGHUP, the replay window, and the dedup journal beside the spool (so a
        // restart still recognises bodies it already answered 2xx).
        var receiver = bridge
        receiver.keyring = keyring
        receiver.tracer = tracingBackend?.tracer
        receiver.replayWindow = replay
        if let window = bridge.dedupWindow {
            let journal = spool.configuration.directory + "/dedup.log"
            do {
                receiver.dedup = try DedupWindow(window: window, maxEntries: bridge.dedupMaxEntries, journalPath: journal, logger: logger)
            } catch {
                throw ValidationError("cannot use the dedup journal: \(error)")
            }
        }
        let executor = await EventLoopGlobalExecutor.tasksRunOnEventLoops() ? "event-loops" : "default"
        logger.info(
            "starting tc-bridge",
            metadata: [
                "broker": "\(connections.map(\.redactedURL).joined(separator: ","))", "exchange": "\(bridge.exchange)", "keys": "\(keys.count)",
                "max_age": "\(maxAgeSeconds)", "dedup_window": "\(dedupSeconds)", "dedup_entries": "\(receiver.dedup?.count ?? 0)",
                "spool": "\(spool.configuration.directory)", "spooled_records": "\(spool.depth.records)",
                "tracing": "\(tracingBackend == nil ? "off" : "otlp")",
                "executor": "\(executor)",
            ])
        // Shutdown runs in reverse: the HTTP server drains first (failed publishes spool), then the
        // forwarder stops, then the publisher waits for its last confirms and closes.
        let app = buildApplication(
            configuration: receiver, publisher: publisher, spool: spool,
            services: (tracingBackend.map { [$0.service] } ?? []) + [publisher, forwarder], logger: logger,
            metrics: { registry.emitToBuffer() },
            onListening: { port in
                // Unbuffered, so scripts and tests waiting for this line see it at once.
                let line = Array("tc-bridge listening on http://\(bridge.host):\(port)\n".utf8)
                _ = line.withUnsafeBytes { write(STDOUT_FILENO, $0.baseAddress, $0.count) }
            })
        try await app.runService()
        logger.info("tc-bridge stopped")
    }

    /// SIGHUP: re-reads the key file with the start-up checks and swaps the key set in atomically
    /// (requests in flight keep the set they started with). A bad file keeps the previous keys and
    /// logs an error. A key from `TC_PRIVATE_KEY` cannot be reloaded (it was removed from the
    /// environment): logged. Never logs a key.
    static func reloadKeys(from source: Environment.KeySource, into keyring: SigningKeyring, logger: Logger) {
        switch source {
        case .environment:
            logger.warning("SIGHUP: the key came from TC_PRIVATE_KEY, which cannot be reloaded; restart the bridge, or use --private-key-file")
        case .file(let path, let allowInsecure):
            do {
                let keys = try SigningKeyFile.load(path: path, allowInsecurePermissions: allowInsecure)
                keyring.replace(WebhookVerifier(keys: keys))
                logger.notice("SIGHUP: signing keys reloaded", metadata: ["file": "\(path)", "keys": "\(keys.count)"])
            } catch {
                logger.error("SIGHUP: signing keys not reloaded; keeping the previous ones", metadata: ["error": "\(error)"])
            }
        }
    }
}
