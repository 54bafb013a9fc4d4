import AMQPClient
import Synchronization
import TCBridge

/// An in-memory publisher for router-level tests: records what it is asked to publish, or fails.
final class RecordingPublisher: EventPublishing {
    private let storage = Mutex<(messages: [AMQPOutboundMessage], failure: AMQPError?, state: AMQPConnectionState)>(([], nil, .connected))

    var published: [AMQPOutboundMessage] { storage.withLock { $0.messages } }

    func failNextPublishes(with error: AMQPError?) { storage.withLock { $0.failure = error } }

    func set(state: AMQPConnectionState) { storage.withLock { $0.state = state } }

    var state: AMQPConnectionState { storage.withLock { $0.state } }

    func publish(_ messages: [AMQPOutboundMessage]) async throws(AMQPError) {
        let failure: AMQPError? = storage.withLock { storage in
            if let failure = storage.failure { return failure }
            storage.messages.append(contentsOf: messages)
            return nil
        }
        if let failure { throw failure }
    }
}
