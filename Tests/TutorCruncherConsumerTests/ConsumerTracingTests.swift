import AMQPClient
import InMemoryTracing
import TestSupport
import Testing
import Tracing
@testable import TutorCruncherConsumer

/// Each handler runs in a consumer span that continues the trace the message carries.
@Suite struct ConsumerTracingTests {
    @Test func handlersRunInConsumerSpansContinuingTheMessagesTraceAcrossRetries() async throws {
        let exchange = uniqueExchange()
        let tracer = InMemoryTracer()
        var configuration = consumerConfiguration(exchange: exchange, actions: [.raisedInvoice])
        configuration.retryPolicy = .init(maxAttempts: 2, initialDelay: .milliseconds(200), jitter: 0)
        configuration.tracer = tracer
        let traceInsideHandler = Recorder<String>()
        let processor = TutorCruncherEventProcessor(configuration: configuration, logger: quietLogger) { _ in
            traceInsideHandler.append(ServiceContext.current?.inMemorySpanContext?.traceID ?? "none")
            if traceInsideHandler.count == 1 { throw HandlerFailure(attempt: 1) }
        }
        try await withServices([processor]) {
            try await waitUntil("consumer connected") { processor.consumer.isConnected }
            _ = try await publishWebhookBodies(
                exchange: exchange, bodies: [Webhooks.body(actions: ["RAISED_INVOICE"])],
                headers: [(InMemoryTracer.traceIDKey, .string("trace-from-bridge")), (InMemoryTracer.spanIDKey, .string("span-from-bridge"))])
            try await waitUntil("handled twice, both spans ended") { traceInsideHandler.count == 2 && tracer.finishedSpans.count == 2 }
        }
        #expect(traceInsideHandler.all == ["trace-from-bridge", "trace-from-bridge"], "the retried copy keeps the trace headers")
        let spans = tracer.finishedSpans
        for span in spans {
            #expect(span.operationName == "RAISED_INVOICE process")
            #expect(span.kind == .consumer)
            #expect(span.traceID == "trace-from-bridge")
            #expect(span.parentSpanID == "span-from-bridge")
        }
        #expect(spans.map { $0.attributes["tutorcruncher.attempt"]?.toSpanAttribute() } == [.int64(1), .int64(2)])
        #expect(spans.map(\.errors.count) == [1, 0], "the failed attempt's error is on its span")
    }
}

/// Trace headers come from whoever published: only well-formed, bounded values are used.
@Suite struct TraceHeaderExtractionTests {
    let valid = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"

    @Test func aWellFormedTraceParentIsRead() {
        #expect(AMQPHeaderExtractor().extract(key: "traceparent", from: [("traceparent", .string(valid))]) == valid)
    }

    @Test(arguments: [
        "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-0",  // short
        "00-0AF7651916CD43DD8448EB211C80319C-B7AD6B7169203331-01",  // uppercase
        "00_0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",  // wrong separator
        "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01-extra",
        "",
    ])
    func aMalformedTraceParentIsIgnored(value: String) {
        #expect(AMQPHeaderExtractor().extract(key: "traceparent", from: [("traceparent", .string(value))]) == nil)
    }

    @Test func anOversizedOrNonStringValueIsIgnored() {
        let huge = String(repeating: "k=v,", count: 40_000)
        #expect(AMQPHeaderExtractor().extract(key: "tracestate", from: [("tracestate", .string(huge))]) == nil)
        #expect(AMQPHeaderExtractor().extract(key: "tracestate", from: [("tracestate", .string("k=v"))]) == "k=v")
        #expect(AMQPHeaderExtractor().extract(key: "traceparent", from: [("traceparent", .int(1))]) == nil)
    }
}
