@testable import AMQPClient
import TestSupport
import Testing

/// `AMQPConnection.close()` says whether the broker answered: only then has it applied what the
/// connection sent before (`AMQPAdmin.move` relies on it to report a move whose acks may be lost).
@Suite(.serialized) struct ConnectionCloseTests {
    @Test func closeSaysWhetherTheBrokerAnswered() async throws {
        try await RabbitMQNode.withDedicated(name: "close", port: 5701) { node in
            var settings = node.connection
            settings.rpcTimeout = .seconds(1)
            let configuration = settings
            let (answered, frozen, again) = try await onOwnThread { () throws -> (Bool, Bool, Bool) in
                let healthy = try AMQPConnection(configuration: configuration)
                let answered = healthy.close()
                let again = healthy.close()  // idempotent; nothing is sent the second time
                let stalled = try AMQPConnection(configuration: configuration)
                try node.pause()  // SIGSTOP: the close goes out, its close-ok never comes back
                defer { try? node.resume() }
                return (answered, stalled.close(), again)
            }
            #expect(answered)
            #expect(!frozen, "no close-ok from a frozen broker within the RPC timeout")
            #expect(!again)
        }
    }
}
