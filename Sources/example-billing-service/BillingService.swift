import Foundation
import Logging
import ServiceLifecycle
import TutorCruncherConsumer

@main
struct BillingService {
    static func main() async throws {
        let logger = Logger(label: "billing")
        let url = ProcessInfo.processInfo.environment["AMQP_URL"] ?? "amqp://guest:guest@127.0.0.1:5672/%2F"
        let configuration = try TutorCruncherConsumerConfiguration(
            url: url, queue: "billing",
            actions: [.raisedInvoice, .clientPaidInvoice], prefetch: 20)
        let processor = TutorCruncherEventProcessor(configuration: configuration, logger: logger) { event in
            guard let invoice = event.subject?.invoice else { return }
            // Returning acknowledges; throwing retries (3 attempts), then dead-letters.
            logger.info("\(event.action) \(invoice.displayID ?? "?"): \(invoice.gross ?? 0) (event \(event.eventID))")
        }
        let group = ServiceGroup(services: [processor], gracefulShutdownSignals: [.sigterm, .sigint], logger: logger)
        try await group.run()
    }
}
