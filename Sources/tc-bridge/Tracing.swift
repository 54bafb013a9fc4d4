import ArgumentParser
import Logging
import OTel
import ServiceLifecycle
import Synchronization
import TCBridge
import Tracing

/// `--tracing otlp`: swift-otel's tracer, exporting over OTLP/HTTP to the collector the standard
/// `OTEL_EXPORTER_OTLP_ENDPOINT` / `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT` name (default
/// `http://localhost:4318`), with W3C trace-context propagation. The standard variables swift-otel
/// reads apply where they name something built in; those that would make swift-otel stop the
/// process (a gRPC exporter, a B3 or baggage propagator, a Jaeger or X-Ray sampler) are refused
/// at start instead. Metrics and logs are not exported this way (`/metrics` and the log lines
/// cover them).
enum BridgeTracing {
    private static let retained = Mutex<[(any Tracer, any Service)]>([])

    /// Values swift-otel accepts and has built in, per variable (any value of others is passed on).
    static let supported: [(names: [String], values: Set<String>)] = [
        (["OTEL_EXPORTER_OTLP_TRACES_PROTOCOL", "OTEL_EXPORTER_OTLP_PROTOCOL"], ["http/protobuf", "http/json"]),
        (["OTEL_TRACES_EXPORTER"], ["otlp", "console", "none"]),
        (["OTEL_PROPAGATORS"], ["tracecontext", "none"]),
        (
            ["OTEL_TRACES_SAMPLER"],
            ["always_on", "always_off", "traceidratio", "parentbased_always_on", "parentbased_always_off", "parentbased_traceidratio"]
        ),
    ]

    /// The tracer and the service that exports its spans (run it in the application's service
    /// group, first, so it stops last and flushes the final spans). `nil` for `off`, or when
    /// `OTEL_SDK_DISABLED=true`. swift-otel's own log lines go through `format` at `level`,
    /// without the values of the variables it read (`OTEL_EXPORTER_OTLP_HEADERS` holds tokens).
    static func make(mode: String, level: Logger.Level, format: BridgeLogHandler.Format, logger: Logger) throws -> (
        tracer: any Tracer, service: any Service
    )? {
        switch mode {
        case "off":
            return nil
        case "otlp":
            if Environment.value("OTEL_SDK_DISABLED")?.lowercased() == "true" {
                logger.notice("OTEL_SDK_DISABLED=true: tracing stays off")
                return nil
            }
            for (names, values) in supported {
                for name in names {
                    guard let value = Environment.value(name) else { continue }
                    let unsupported = value.split(separator: ",").map { String($0.filter { $0 != " " }).lowercased() }.filter { !values.contains($0) }
                    if !unsupported.isEmpty {
                        throw ValidationError(
                            "cannot set up OTLP tracing: \(name)=\(value) is not supported (use \(values.sorted().joined(separator: ", ")))")
                    }
                }
            }
            var configuration = OTel.Configuration.default
            configuration.serviceName = "tc-bridge"
            var diagnostics = Logger(label: "tc-bridge.otel") { label in
                OTelDiagnosticsLogHandler(base: BridgeLogHandler(label: label, format: format))
            }
            diagnostics.logLevel = level
            configuration.diagnosticLogger = .custom(diagnostics)
            configuration.diagnosticLogLevel = switch level {
            case .trace: .trace
            case .debug: .debug
            case .info, .notice: .info
            case .warning: .warning
            case .error, .critical: .error
            }
            configuration.metrics.enabled = false
            configuration.logs.enabled = false
            configuration.traces.enabled = true
            configuration.traces.exporter = .otlp
            configuration.traces.otlpExporter.protocol = .httpProtobuf
            configuration.propagators = [.traceContext]
            do {
                let backend = try OTel.makeTracingBackend(configuration: configuration)
                // Kept until the process exits. The exporter's deinit calls AsyncHTTPClient's
                // `syncShutdown()`, a fatal error on an event loop, and NIO's event loops are this
                // process's global executor (main.swift): the last release would happen on one.
                // Its service has shut the client down properly by then.
                retained.withLock { $0.append((backend.factory, backend.service)) }
                return (backend.factory, backend.service)
            } catch {
                throw ValidationError("cannot set up OTLP tracing: \(error)")
            }
        default:
            throw ValidationError("unknown tracing mode \"\(mode)\" (off or otlp)")
        }
    }
}

/// swift-otel's diagnostics through the bridge's log handler, without the values of the
/// environment variables it read: it logs each one it applies, and `OTEL_EXPORTER_OTLP_HEADERS`
/// carries a collector's credentials. Value semantics, like the handler it wraps.
struct OTelDiagnosticsLogHandler: LogHandler {
    static let withheld: Set<String> = ["environment_value", "previous_value", "new_value"]

    var base: BridgeLogHandler

    var logLevel: Logger.Level {
        get { base.logLevel }
        set { base.logLevel = newValue }
    }

    var metadata: Logger.Metadata {
        get { base.metadata }
        set { base.metadata = newValue.filter { !Self.withheld.contains($0.key) } }
    }

    subscript(metadataKey key: String) -> Logger.Metadata.Value? {
        get { base[metadataKey: key] }
        set {
            guard !Self.withheld.contains(key) else { return }
            base[metadataKey: key] = newValue
        }
    }

    func log(event: LogEvent) {
        var event = event
        event.metadata = event.metadata?.filter { !Self.withheld.contains($0.key) }
        base.log(event: event)
    }
}
