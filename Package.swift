// swift-tools-version:6.2
import PackageDescription

let swiftSettings: [SwiftSetting] = [
    .enableUpcomingFeature("ExistentialAny"),
    .enableUpcomingFeature("MemberImportVisibility"),
]

let package = Package(
    name: "tc-bridge",
    platforms: [.macOS(.v15)],
    products: [
        .executable(name: "tc-bridge", targets: ["tc-bridge"]),
        .executable(name: "tc-consume", targets: ["tc-consume"]),
        .library(name: "TutorCruncherConsumer", targets: ["TutorCruncherConsumer"]),
        .library(name: "TutorCruncherEvents", targets: ["TutorCruncherEvents"]),
        .library(name: "TutorCruncherConsumerTesting", targets: ["TutorCruncherConsumerTesting"]),
        .library(name: "TutorCruncher", targets: ["TutorCruncher"]),
        .library(name: "TutorCruncherSignature", targets: ["TutorCruncherSignature"]),
        .library(name: "AMQPClient", targets: ["AMQPClient"]),
        .library(name: "TCBridgeContract", targets: ["TCBridgeContract"]),
    ],
    dependencies: [
        .package(url: "https://github.com/hummingbird-project/hummingbird.git", from: "2.28.0"),
        .package(url: "https://github.com/apple/swift-argument-parser.git", from: "1.5.0"),
        .package(url: "https://github.com/apple/swift-log.git", from: "1.16.0"),
        .package(url: "https://github.com/apple/swift-metrics.git", from: "2.5.0"),
        .package(url: "https://github.com/swift-server/swift-prometheus.git", from: "2.1.0"),
        .package(url: "https://github.com/jpsim/Yams.git", from: "5.0.0"),
        .package(url: "https://github.com/apple/swift-crypto.git", "3.12.0"..<"5.0.0"),
        .package(url: "https://github.com/apple/swift-collections.git", from: "1.1.0"),
        .package(url: "https://github.com/swift-server/swift-service-lifecycle.git", from: "2.6.0"),
        .package(url: "https://github.com/apple/swift-http-types.git", from: "1.0.0"),
        .package(url: "https://github.com/apple/swift-nio.git", from: "2.80.0"),
        .package(url: "https://github.com/apple/swift-distributed-tracing.git", from: "1.1.0"),
        // OTLP export of the bridge's spans, over HTTP only (the gRPC exporter's dependencies
        // would more than double the build).
        .package(url: "https://github.com/swift-otel/swift-otel.git", from: "1.0.0", traits: ["OTLPHTTP"]),
    ],
    targets: [
        // rabbitmq-c 0.11 (Debian's librabbitmq-dev) plus a tiny shim for what Swift cannot call directly.
        .systemLibrary(
            name: "CRabbitMQ",
            pkgConfig: "librabbitmq",
            providers: [.apt(["librabbitmq-dev"])]
        ),
        // The Swift runtime's global-enqueue hook, reached at link time (see EventLoopGlobalExecutor).
        .target(name: "CSwiftConcurrencyHook"),
        // Hex digits, once for every module. No dependencies.
        .target(name: "HexCoding", swiftSettings: swiftSettings),
        // `Duration` in whole seconds down to nanoseconds, saturating. No dependencies.
        .target(name: "DurationUnits", swiftSettings: swiftSettings),
        // The message contract between tc-bridge and its consumers: exchange names, routing keys,
        // header names. No dependencies, so the consumer library shares it without the receiver.
        .target(name: "TCBridgeContract", swiftSettings: swiftSettings),
        // Swift AMQP client: owns every rabbitmq-c handle on a dedicated thread; exposes no C type.
        .target(
            name: "AMQPClient",
            dependencies: [
                "CRabbitMQ",
                "DurationUnits",
                "HexCoding",
                .product(name: "Logging", package: "swift-log"),
                .product(name: "Metrics", package: "swift-metrics"),
                .product(name: "DequeModule", package: "swift-collections"),
                .product(name: "ServiceLifecycle", package: "swift-service-lifecycle"),
            ],
            swiftSettings: swiftSettings
        ),
        // A crash-safe on-disk queue of opaque records with group-committed fsync.
        .target(
            name: "DurableSpool",
            dependencies: [
                .product(name: "DequeModule", package: "swift-collections"),
                .product(name: "Logging", package: "swift-log"),
            ],
            swiftSettings: swiftSettings
        ),
        // TutorCruncher webhook domain: payload parsing, the action catalogue, the normalised
        // envelope. No I/O, and no cryptography, so the consumer library does not build BoringSSL.
        .target(
            name: "TutorCruncher",
            dependencies: [
                "HexCoding",
                "TCBridgeContract",
            ],
            swiftSettings: swiftSettings
        ),
        // Webhook signatures (HMAC-SHA256 with the integration's key) and body digests: the receiver's side.
        .target(
            name: "TutorCruncherSignature",
            dependencies: [
                "HexCoding",
                .product(name: "Crypto", package: "swift-crypto"),
            ],
            swiftSettings: swiftSettings
        ),
        // The invariants the fuzzer checks on every input; shared with the fuzz regression tests.
        .target(
            name: "FuzzChecks",
            dependencies: ["TutorCruncher", "TutorCruncherSignature"],
            swiftSettings: swiftSettings
        ),
        // libFuzzer entry point over FuzzChecks: scripts/fuzz builds it with -DFUZZING and
        // -sanitize=fuzzer,address in .build-fuzz; a plain build gets a stub `main`.
        .executableTarget(
            name: "tc-fuzz",
            dependencies: ["FuzzChecks"],
            swiftSettings: swiftSettings + [.enableExperimentalFeature("Extern")]  // @_extern(c)
        ),
        // Typed, decoded events for consumers: Decodable views over the envelope, lossless JSON decoding.
        .target(
            name: "TutorCruncherEvents",
            dependencies: ["TutorCruncher"],
            swiftSettings: swiftSettings
        ),
        // The consumer library downstream services import: subscribe to actions, get typed events.
        // Depends on neither Hummingbird nor the receiver.
        .target(
            name: "TutorCruncherConsumer",
            dependencies: [
                "AMQPClient",
                "DurationUnits",
                "TCBridgeContract",
                .product(name: "Metrics", package: "swift-metrics"),
                "TutorCruncher",
                "TutorCruncherEvents",
                .product(name: "DequeModule", package: "swift-collections"),
                .product(name: "Logging", package: "swift-log"),
                .product(name: "ServiceLifecycle", package: "swift-service-lifecycle"),
                .product(name: "Tracing", package: "swift-distributed-tracing"),
            ],
            swiftSettings: swiftSettings
        ),
        // The test kit for services' handler tests: real-shaped events of every subject type and
        // an in-memory harness recording ack, retry and dead-letter decisions. No broker.
        .target(
            name: "TutorCruncherConsumerTesting",
            dependencies: ["TutorCruncherConsumer", "TutorCruncherEvents", "TutorCruncher"],
            swiftSettings: swiftSettings
        ),
        .executableTarget(
            name: "tc-consume",
            dependencies: [
                "AMQPClient",
                "TutorCruncher",
                "TutorCruncherConsumer",
                .product(name: "ArgumentParser", package: "swift-argument-parser"),
                .product(name: "Logging", package: "swift-log"),
                .product(name: "ServiceLifecycle", package: "swift-service-lifecycle"),
                .product(name: "UnixSignals", package: "swift-service-lifecycle"),
            ],
            swiftSettings: swiftSettings
        ),
        // Benchmark helpers driven by scripts/bench: signed distinct bodies, the bare publisher.
        .executableTarget(
            name: "tc-bench",
            dependencies: [
                "AMQPClient",
                "TCBridge",
                "HexCoding",
                "TutorCruncher",
                "TutorCruncherSignature",
                .product(name: "ArgumentParser", package: "swift-argument-parser"),
                .product(name: "Hummingbird", package: "hummingbird"),
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "NIOPosix", package: "swift-nio"),
                .product(name: "DequeModule", package: "swift-collections"),
                .product(name: "Logging", package: "swift-log"),
            ],
            swiftSettings: swiftSettings
        ),
        // The README's minimal consumer service, compiled so it cannot rot.
        .executableTarget(
            name: "example-billing-service",
            dependencies: [
                "TutorCruncherConsumer",
                .product(name: "Logging", package: "swift-log"),
                .product(name: "ServiceLifecycle", package: "swift-service-lifecycle"),
            ]
            // Deliberately without this package's strict settings: it shows what a user writes.
        ),
        // The HTTP receiver: Hummingbird routes that verify, normalise and publish.
        .target(
            name: "TCBridge",
            dependencies: [
                "AMQPClient",
                "CSwiftConcurrencyHook",
                "DurableSpool",
                "DurationUnits",
                "HexCoding",
                "TCBridgeContract",
                "TutorCruncher",
                "TutorCruncherSignature",
                .product(name: "Hummingbird", package: "hummingbird"),
                .product(name: "HummingbirdCore", package: "hummingbird"),
                .product(name: "HTTPTypes", package: "swift-http-types"),
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "NIOHTTP1", package: "swift-nio"),
                .product(name: "NIOPosix", package: "swift-nio"),
                .product(name: "Logging", package: "swift-log"),
                .product(name: "Metrics", package: "swift-metrics"),
                .product(name: "ServiceLifecycle", package: "swift-service-lifecycle"),
                .product(name: "Tracing", package: "swift-distributed-tracing"),
            ],
            swiftSettings: swiftSettings
        ),
        .executableTarget(
            name: "tc-bridge",
            dependencies: [
                "DurationUnits",
                "TCBridge",
                "TCBridgeContract",
                "DurableSpool",
                "TutorCruncher",
                "TutorCruncherSignature",
                "AMQPClient",
                .product(name: "ArgumentParser", package: "swift-argument-parser"),
                .product(name: "Hummingbird", package: "hummingbird"),
                .product(name: "Logging", package: "swift-log"),
                .product(name: "Metrics", package: "swift-metrics"),
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "NIOPosix", package: "swift-nio"),
                .product(name: "Prometheus", package: "swift-prometheus"),
                .product(name: "UnixSignals", package: "swift-service-lifecycle"),
                .product(name: "OTel", package: "swift-otel"),
                .product(name: "Tracing", package: "swift-distributed-tracing"),
            ],
            swiftSettings: swiftSettings
        ),
        .testTarget(
            name: "TutorCruncherTests",
            dependencies: ["TutorCruncher", "TutorCruncherSignature", "FuzzChecks", "TestSupport"],
            resources: [.copy("Fixtures")],
            swiftSettings: swiftSettings
        ),
        .testTarget(
            name: "TutorCruncherEventsTests",
            dependencies: ["TutorCruncherEvents", "TutorCruncherSignature", "TestSupport"],
            swiftSettings: swiftSettings
        ),
        .testTarget(
            name: "TutorCruncherConsumerTests",
            dependencies: [
                "TutorCruncherConsumer", "TestSupport",
                .product(name: "ServiceLifecycle", package: "swift-service-lifecycle"),
                .product(name: "Logging", package: "swift-log"),
                .product(name: "InMemoryTracing", package: "swift-distributed-tracing"),
                .product(name: "Tracing", package: "swift-distributed-tracing"),
            ],
            swiftSettings: swiftSettings
        ),
        .testTarget(
            name: "TutorCruncherConsumerTestingTests",
            dependencies: ["TutorCruncherConsumerTesting", "TutorCruncherConsumer"],
            swiftSettings: swiftSettings
        ),
        .testTarget(
            name: "DurableSpoolTests",
            dependencies: ["DurableSpool", "TestSupport", .product(name: "Logging", package: "swift-log")],
            swiftSettings: swiftSettings
        ),
        .testTarget(
            name: "HexCodingTests",
            dependencies: ["HexCoding"],
            swiftSettings: swiftSettings
        ),
        .testTarget(
            name: "DurationUnitsTests",
            dependencies: ["DurationUnits"],
            swiftSettings: swiftSettings
        ),
        .testTarget(
            name: "AMQPClientTests",
            dependencies: ["AMQPClient", "TestSupport"],
            swiftSettings: swiftSettings
        ),
        .testTarget(
            name: "TCBridgeTests",
            dependencies: [
                "TCBridge",
                "TCBridgeContract",
                "TestSupport",
                "TutorCruncherConsumer",
                "TutorCruncherSignature",
                .product(name: "Yams", package: "Yams"),
                .product(name: "HummingbirdTesting", package: "hummingbird"),
                .product(name: "HTTPTypes", package: "swift-http-types"),
                .product(name: "NIOPosix", package: "swift-nio"),
                "HexCoding",
                .product(name: "Hummingbird", package: "hummingbird"),
                .product(name: "ServiceLifecycle", package: "swift-service-lifecycle"),
                .product(name: "InMemoryTracing", package: "swift-distributed-tracing"),
                .product(name: "OTel", package: "swift-otel"),
                .product(name: "Tracing", package: "swift-distributed-tracing"),
            ],
            swiftSettings: swiftSettings
        ),
        // Shared test helpers: the private RabbitMQ node, a raw AMQP test consumer, signing.
        .target(
            name: "TestSupport",
            dependencies: [
                "AMQPClient",
                "TutorCruncher",
                "TutorCruncherSignature",
                "TCBridge",
                .product(name: "Logging", package: "swift-log"),
                .product(name: "Hummingbird", package: "hummingbird"),
                .product(name: "HummingbirdTesting", package: "hummingbird"),
                .product(name: "HTTPTypes", package: "swift-http-types"),
                .product(name: "NIOCore", package: "swift-nio"),
            ],
            path: "Tests/TestSupport",
            swiftSettings: swiftSettings
        ),
    ]
)
