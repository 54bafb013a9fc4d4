import ArgumentParser
import Logging
import OTel
import ServiceLifecycle
import Synchronization
import Tracing

/// `--tracing otlp`: swift-otel's tracer, exporting over OTLP/HTTP (protobuf) to the collector the
/// standard `OTEL_EXPORTER_OTLP_ENDPOINT` / `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT` name (default
/// `http://localhost:4318`), with W3C trace-context propagation. Every other standard `OTEL_*`
/// variable applies (service name, sampler, headers, batch delays). Metrics and logs are not
/// exported this way (`/metrics` and the log lines cover them).
enum BridgeTracing {
    private static let retained = Mutex<[(any Tracer, any Service)]>([])

    /// The tracer and the service that exports its spans (run it in the application's service
    /// group, first, so it stops last and flushes the final spans). `nil` for `off`.
    static func make(mode: String, logger: Logger) throws -> (tracer: any Tracer, service: any Service)? {
        switch mode {
        case "off":
            return nil
        case "otlp":
            // swift-otel stops the process (fatalError) when asked for an exporter it was built
            // without: only OTLP/HTTP protobuf is built in.
            for name in ["OTEL_EXPORTER_OTLP_TRACES_PROTOCOL", "OTEL_EXPORTER_OTLP_PROTOCOL"] {
                if let value = Environment.value(name), value != "http/protobuf" {
                    throw ValidationError("cannot set up OTLP tracing: \(name)=\(value); only http/protobuf is built in")
                }
            }
            var configuration = OTel.Configuration.default
            configuration.serviceName = "tc-bridge"
            configuration.diagnosticLogger = .custom(logger)
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
                throw ValidationError("cannot set up OTLP tracing: \(error) (only OTLP/HTTP protobuf is built in)")
            }
        default:
            throw ValidationError("unknown tracing mode \"\(mode)\" (off or otlp)")
        }
    }
}

