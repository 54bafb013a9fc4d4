import Foundation
import Testing
import TestSupport
import TutorCruncherConsumer
import Yams

@testable import TCBridge

/// What can be checked of the container, compose, Prometheus, Grafana and systemd files without a
/// Docker engine: that they refer to files, versions, settings and metrics that exist.
@Suite struct ContainerFilesTests {
    let root = Repository.root

    func read(_ path: String) throws -> String { try String(contentsOfFile: root + "/" + path, encoding: .utf8) }

    /// Every environment variable `tc-bridge` reads, from its sources (`env: "X"`, `value("X")`, `flag("X")`).
    func bridgeEnvironment() throws -> Set<String> {
        var names: Set<String> = []
        for file in try FileManager.default.contentsOfDirectory(atPath: root + "/Sources/tc-bridge") where file.hasSuffix(".swift") {
            let text = try read("Sources/tc-bridge/" + file)
            for match in text.matches(of: /(?:env: |value\(|flag\()"([A-Z][A-Z0-9_]*)"/) { names.insert(String(match.1)) }
        }
        return names
    }

    /// The standard `OTEL_*` variables swift-otel reads (`--tracing otlp` applies them), from the
    /// resolved dependency's source: its literal keys and its OTLP exporter keys (shared and traces).
    func openTelemetryEnvironment() throws -> Set<String> {
        let text = try read(".build/checkouts/swift-otel/Sources/OTel/OTelCore/OTel+Configuration+Environment.swift")
        var names: Set<String> = []
        for match in text.matches(of: /"(OTEL_[A-Z0-9_]+)"/) { names.insert(String(match.1)) }
        for match in text.matches(of: /otlpExporterKey\(suffix: "([A-Z_]+)"\)/) {
            names.insert("OTEL_EXPORTER_OTLP_\(match.1)")
            names.insert("OTEL_EXPORTER_OTLP_TRACES_\(match.1)")
        }
        return names
    }

    @Test func everyPathTheDockerfileCopiesExists() throws {
        let copies = try read("docker/Dockerfile").split(separator: "\n").filter { $0.hasPrefix("COPY ") && !$0.contains("--from=") }
        #expect(copies.count >= 3)
        for line in copies {
            let words = line.split(separator: " ").dropFirst()
            for source in words.dropLast() {
                #expect(FileManager.default.fileExists(atPath: root + "/" + source), "COPY \(source): not in the repository")
            }
        }
    }

    @Test func theBuildImageSatisfiesTheToolsVersionPackageSwiftDeclares() throws {
        let manifest = try read("Package.swift")
        let declared = try #require(manifest.firstMatch(of: /swift-tools-version:\s*(\d+)\.(\d+)/))
        let dockerfile = try read("docker/Dockerfile")
        let image = try #require(dockerfile.firstMatch(of: /FROM swift:(\d+)\.(\d+)/), "the build stage uses the official Swift image")
        let need = (Int(declared.1) ?? 0, Int(declared.2) ?? 0)
        let have = (Int(image.1) ?? 0, Int(image.2) ?? 0)
        #expect(have >= need, "swift:\(have.0).\(have.1) cannot build a package of tools version \(need.0).\(need.1)")
        #expect(dockerfile.contains(#"HEALTHCHECK"#) && dockerfile.contains(#"tc-bridge", "probe""#), "health checked by tc-bridge probe")
        #expect(dockerfile.contains("USER 10001"), "not root")
        #expect(dockerfile.contains("TC_BRIDGE_SPOOL_DIR=/var/lib/tc-bridge/spool") && dockerfile.contains("VOLUME /var/lib/tc-bridge/spool"))
    }

    /// The image, the benchmark and the test script must build release with one set of flags
    /// (scripts/build-release): otherwise the benchmark measures a binary nobody ships, and switching
    /// between them rebuilds every module.
    @Test func everyReleaseBuildGoesThroughTheSharedReleaseFlags() throws {
        let code = try read("scripts/build-release").split(separator: "\n").filter { !$0.trimmingCharacters(in: .whitespaces).hasPrefix("#") }
            .joined(separator: "\n")
        let flags = [
            "--static-swift-stdlib", "-Xswiftc -Xfrontend -Xswiftc -function-sections", "-Xcc -ffunction-sections",
            "-Xswiftc -use-ld=lld", "-Xlinker -z -Xlinker pack-relative-relocs", "--symbol-ordering-file=", "scripts/tc-bridge.order",
        ]
        for flag in flags {
            #expect(code.contains(flag), "scripts/build-release no longer passes \(flag)")
        }
        for path in ["docker/Dockerfile", "scripts/bench", "scripts/test", "scripts/run-bridge", "scripts/order-startup"] {
            #expect(try read(path).contains("scripts/build-release --product"), "\(path) does not build with scripts/build-release")
        }
        // Nothing else in the repository (scripts, image, CI, recipes in the documents, comments in
        // the tests) builds release with flags of its own.
        var files = ["README.md", "BENCHMARKS.md", ".ci/run"]
        for directory in ["scripts", "docker", "Tests", "Sources"] {
            let enumerator = try #require(FileManager.default.enumerator(atPath: root + "/" + directory))
            while let file = enumerator.nextObject() as? String {
                let path = directory + "/" + file
                guard path != "scripts/build-release", !file.contains("Fixtures/"), !file.contains("Fuzz/") else { continue }
                if directory == "scripts" || file.hasSuffix(".swift") || file.hasSuffix("Dockerfile") || file.hasSuffix(".md") { files.append(path) }
            }
        }
        for path in files {
            var isDirectory: ObjCBool = false
            guard FileManager.default.fileExists(atPath: root + "/" + path, isDirectory: &isDirectory), !isDirectory.boolValue else { continue }
            // A file that is not text (an editor's swap file, say) holds no build command.
            guard let text = try? read(path) else { continue }
            var lines = text.split(separator: "\n", omittingEmptySubsequences: false)
            if path.hasSuffix(".md") {  // the recipes, not the history told in prose
                var inCode = false
                lines = lines.filter { line in
                    if line.hasPrefix("```") { inCode.toggle(); return false }
                    return inCode
                }
            }
            // Asking SwiftPM where the release products are builds nothing.
            let own = lines.filter { $0.contains("swift ") }.map { $0.replacing(/\$\(swift build [^)]*--show-bin-path\)/, with: "") }
                .filter { $0.contains(/swift (build|run|test)\b.*(-c release|--configuration[ =]release)/) }
            #expect(own.isEmpty, "\(path) builds release with flags of its own: \(own)")
        }
        let order = try read("scripts/tc-bridge.order").split(separator: "\n")
        #expect(order.count > 100 && order.contains("tc_bridge_main"), "scripts/order-startup has not filled scripts/tc-bridge.order")
    }

    @Test func theComposeFileParsesAndNamesOnlySettingsTheServicesRead() throws {
        let compose = try #require(try Yams.load(yaml: read("docker/compose.yaml")) as? [String: Any])
        let services = try #require(compose["services"] as? [String: Any])
        #expect(Set(services.keys) == ["rabbitmq", "tc-bridge", "billing-example", "prometheus", "grafana", "jaeger"])
        let otel = try openTelemetryEnvironment()
        #expect(otel.contains("OTEL_EXPORTER_OTLP_ENDPOINT") && otel.contains("OTEL_SERVICE_NAME"))
        let known = try bridgeEnvironment().union(otel)
        #expect(known.contains("AMQP_URL") && known.contains("TC_PRIVATE_KEY_FILE") && known.contains("TC_BRIDGE_PORT"))
        let bridge = try #require(services["tc-bridge"] as? [String: Any])
        let environment = try #require(bridge["environment"] as? [String: Any])
        for name in environment.keys { #expect(known.contains(name), "compose sets \(name), which tc-bridge does not read") }
        let billing = try #require((services["billing-example"] as? [String: Any])?["environment"] as? [String: Any])
        #expect(Set(billing.keys) == ["AMQP_URL"])
        for name in ["tc-bridge", "billing-example"] {
            let build = try #require((services[name] as? [String: Any])?["build"] as? [String: Any])
            #expect(build["dockerfile"] as? String == "docker/Dockerfile")
            let target = try #require(build["target"] as? String)
            #expect(try read("docker/Dockerfile").contains("AS \(target)\n"), "no stage \(target)")
        }
        // Files the services mount exist.
        for service in services.values.compactMap({ $0 as? [String: Any] }) {
            for volume in (service["volumes"] as? [String]) ?? [] where volume.hasPrefix("./") {
                let source = String(volume.split(separator: ":")[0].dropFirst(2))
                #expect(FileManager.default.fileExists(atPath: root + "/docker/" + source), "mount \(source) missing")
            }
        }
    }

    @Test func theDashboardAndTheAlertsQueryOnlyExportedMetrics() throws {
        let exported = Set(BridgeMetrics.names + ConsumerMetrics.names + ["up"])
        let dashboard = try #require(try JSONSerialization.jsonObject(with: Data(read("docker/grafana/dashboards/tc-bridge.json").utf8)) as? [String: Any])
        let panels = try #require(dashboard["panels"] as? [[String: Any]])
        var expressions = panels.flatMap { ($0["targets"] as? [[String: Any]] ?? []).compactMap { $0["expr"] as? String } }
        #expect(expressions.count >= 10)
        let alerts = try #require(try Yams.load(yaml: read("docker/prometheus/alerts.yml")) as? [String: Any])
        for group in alerts["groups"] as? [[String: Any]] ?? [] {
            for rule in group["rules"] as? [[String: Any]] ?? [] { expressions.append(try #require(rule["expr"] as? String)) }
        }
        #expect(expressions.count >= 18)
        for expression in expressions {
            for match in expression.matches(of: /\b(tcbridge_[a-z_]+|tcconsumer_[a-z_]+|amqp_[a-z_]+|up)\b/) {
                let name = String(match.1).replacing(/_(bucket|sum|count)$/, with: "")
                #expect(exported.contains(name), "\(name) in \(expression) is not exported")
            }
        }
        let prometheus = try read("docker/prometheus/prometheus.yml")
        #expect(prometheus.contains("/etc/prometheus/alerts.yml") && prometheus.contains("tc-bridge:8080"))
    }

    @Test func theSystemdUnitRunsTheBridgeHardenedWithItsStateAndKeyManagedBySystemd() throws {
        let unit = try read("docker/systemd/tc-bridge.service")
        let known = try bridgeEnvironment()
        for match in unit.matches(of: /^Environment=([A-Z_]+)=/.anchorsMatchLineEndings()) {
            #expect(known.contains(String(match.1)), "the unit sets \(match.1), which tc-bridge does not read")
        }
        for setting in [
            "ExecStart=/usr/local/bin/tc-bridge serve", "DynamicUser=yes", "StateDirectory=tc-bridge/spool", "ProtectSystem=strict",
            "LoadCredential=tc-private-key:", "NoNewPrivileges=yes", "ExecReload=/bin/kill -HUP $MAINPID",
        ] {
            #expect(unit.contains(setting), "missing \(setting)")
        }
        #expect(!unit.contains("TC_PRIVATE_KEY="), "the key never goes into the environment")
    }
}
