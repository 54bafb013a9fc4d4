import Logging
import Metrics

/// How one connection's serving ended.
enum ServeOutcome {
    /// Shutdown completed; the connection should be closed for good.
    case stopped
    /// The connection broke; reconnect.
    case lost(AMQPError)
}

/// The loop every owner thread runs: connect (retrying with backoff), prepare the connection, serve
/// it until shutdown or loss, and start again after a loss. Owner-thread only; the hooks run on it.
struct ConnectionSupervisor {
    /// Brokers in order of preference: each attempt tries them from the first, so after a loss the
    /// client fails over to the next that answers and returns to the preferred one when it can.
    let connections: [AMQPConnectionConfiguration]
    let backoff: AMQPBackoff
    let wakeup: Wakeup
    let logger: Logger
    let setState: (AMQPConnectionState) -> Void
    /// `client` label of `amqp_reconnects_total` (`publisher`, `consumer`).
    var client = "publisher"
    /// Give up (return the error) when every broker refuses for a reason retrying will not change
    /// (``AMQPError/isPermanentRefusal``), instead of retrying with backoff.
    var stopOnPermanentRefusal = false

    /// Returns when `shouldStop` says so before an attempt, or when `serve` reports `.stopped`
    /// (`nil`), or with the refusal when `stopOnPermanentRefusal` and every broker refused.
    /// - Parameters:
    ///   - shouldStop: checked before every attempt (also the place to fail work queued meanwhile).
    ///   - prepare: declares topology and channel modes on a new connection.
    ///   - connected: the connection is ready; reset per-connection state.
    ///   - serve: runs the connection until shutdown or loss.
    ///   - lost: the connection broke; fail or forget what was outstanding on it.
    func run(
        shouldStop: () -> Bool,
        prepare: (AMQPConnection) throws(AMQPError) -> Void,
        connected: () -> Void,
        serve: (AMQPConnection) -> ServeOutcome,
        lost: (AMQPError) -> Void
    ) -> AMQPError? {
        var attempt = 0
        var hasConnected = false
        while !shouldStop() {
            var current: AMQPConnection?
            var failures: [AMQPError] = []
            for candidate in connections {
                do throws(AMQPError) {
                    let connection = try AMQPConnection(configuration: candidate)
                    do throws(AMQPError) {
                        try prepare(connection)
                    } catch {
                        connection.close()
                        throw error
                    }
                    current = connection
                    break
                } catch {
                    failures.append(error)
                    if connections.count > 1 {
                        logger.warning("broker unavailable; trying the next", metadata: ["broker": "\(candidate.redactedURL)", "error": "\(error)"])
                    }
                }
            }
            guard let current else {
                // The refusal that does not clear by itself wins: someone must act on it.
                let error = failures.first(where: \.isConfigurationRefusal) ?? failures.last ?? AMQPError(.connectionFailed, "no broker configured")
                setState(error.isConfigurationRefusal ? .misconfigured(reason: error.message) : .disconnected(reason: error.message))
                // Only before the first connection: a configuration that once worked may be refused
                // for a while (an auth backend down, users not loaded yet after a node restart).
                if stopOnPermanentRefusal, !hasConnected, !failures.isEmpty, failures.allSatisfy(\.isPermanentRefusal) {
                    logger.error("the broker refuses this configuration; giving up", metadata: ["error": "\(error)"])
                    return error
                }
                let delay = backoff.delay(attempt: attempt)
                logger.warning("broker connection failed; retrying", metadata: ["error": "\(error)", "retry_in": "\(delay)"])
                attempt += 1
                wakeup.wait(socket: -1, timeout: delay)
                continue
            }
            let connectedAt = ContinuousClock.now
            if hasConnected { Counter(label: "amqp_reconnects_total", dimensions: [("client", client)]).increment() }
            hasConnected = true
            connected()
            setState(.connected)
            logger.info("connected to broker", metadata: ["broker": "\(current.configuration.redactedURL)"])
            switch serve(current) {
            case .stopped:
                current.close()
                return nil
            case .lost(let error):
                setState(.disconnected(reason: error.message))
                lost(error)
                current.close()
                // A connection that held for the longest backoff delay is made again at once. One
                // lost sooner (a channel the broker closes at the first publish, a redelivered
                // message that fails the same way every time) waits as a failed attempt does, so
                // such a failure cannot turn into a loop of connections as fast as the broker takes them.
                if ContinuousClock.now - connectedAt >= backoff.maximum {
                    attempt = 0
                    logger.warning("broker connection lost; reconnecting", metadata: ["error": "\(error)"])
                } else {
                    let delay = backoff.delay(attempt: attempt)
                    attempt += 1
                    logger.warning(
                        "broker connection lost soon after it was made; reconnecting after a delay",
                        metadata: ["error": "\(error)", "retry_in": "\(delay)"])
                    wakeup.wait(socket: -1, timeout: delay)
                }
            }
        }
        return nil
    }
}

extension AMQPError {
    /// The broker refused the connection or a declaration for a reason that retrying will not
    /// change: ACCESS_REFUSED (403: credentials, permissions), NOT_FOUND (404), PRECONDITION_FAILED
    /// (406: a declaration that does not match), NOT_ALLOWED (530: virtual host).
    var isConfigurationRefusal: Bool {
        guard let replyCode else { return false }
        return [403, 404, 406, 530].contains(replyCode)
    }

    /// A refusal only a change of configuration or permissions fixes: ACCESS_REFUSED (403:
    /// credentials, permissions), PRECONDITION_FAILED (406: a declaration that does not match an
    /// existing queue or exchange), NOT_ALLOWED (530: virtual host). Not NOT_FOUND (404), which a
    /// cluster answers for a queue whose node is down.
    public var isPermanentRefusal: Bool {
        guard let replyCode, [403, 406, 530].contains(replyCode) else { return false }
        // 530 is also a virtual host's or user's connection limit, which clears by itself.
        return !(replyCode == 530 && message.contains("limit"))
    }
}

extension AMQPConnection {
    /// Declares `exchanges`, then `queues` with their bindings, on a new connection; logs each one
    /// used as it exists rather than as declared (see the declarations' modes).
    func declareTopology(exchanges: [AMQPExchangeDeclaration], queues: [AMQPQueueDeclaration], logger: Logger) throws(AMQPError) {
        for exchange in exchanges {
            if case .usedExisting(let reason) = try declare(exchange) {
                logger.warning("using the existing exchange as it is", metadata: ["exchange": "\(exchange.name)", "reason": "\(reason)"])
            }
        }
        for queue in queues {
            if case .usedExisting(let reason) = try declare(queue) {
                logger.warning("using the existing queue as it is", metadata: ["queue": "\(queue.name)", "reason": "\(reason)"])
            }
        }
    }
}
