import AMQPClient
import Tracing

/// Writes trace context (e.g. W3C `traceparent`) into an AMQP message's headers, as strings.
struct AMQPHeaderInjector: Injector {
    func inject(_ value: String, forKey key: String, into carrier: inout [(String, AMQPHeaderValue)]) {
        carrier.removeAll { $0.0 == key }
        carrier.append((key, .string(value)))
    }
}
