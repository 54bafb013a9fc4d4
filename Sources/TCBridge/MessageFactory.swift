import AMQPClient
import TCBridgeContract
import TutorCruncher

/// Names of the AMQP headers the bridge sets (the shared ``BridgeContract/Header``).
public typealias BridgeHeader = BridgeContract.Header

/// Turns envelopes and unrecognised bodies into AMQP messages. Pure; thread-safe.
public struct MessageFactory: Sendable {
    /// Routing key of bodies that are not an event batch.
    public static let unrecognisedRoutingKey = BridgeContract.unrecognisedRoutingKey

    public var exchange: String
    public var appID: String

    public init(exchange: String, appID: String) {
        self.exchange = exchange
        self.appID = appID
    }

    /// The event's message: routing key and `type` its action, headers from its subject and branch.
    ///
    /// An event that cannot travel as an AMQP message as it is (an action over 255 bytes, a subject
    /// model too large for a header, anything ``AMQPOutboundMessage/encodingProblem(frameSize:)``
    /// finds) is published under `unrecognised` instead, body unchanged, with the reason in
    /// `tc-unrecognised-reason`: nothing is lost and the connection never sees it.
    public func message(for envelope: EventEnvelope, receivedAt: UTCTimestamp) -> AMQPOutboundMessage {
        let message = eventMessage(for: envelope, receivedAt: receivedAt)
        guard let problem = message.encodingProblem() else { return message }
        return AMQPOutboundMessage(
            exchange: exchange,
            routingKey: Self.unrecognisedRoutingKey,
            properties: AMQPProperties(
                contentType: "application/json",
                persistent: true,
                messageID: envelope.eventID,
                type: Self.unrecognisedRoutingKey,
                timestamp: receivedAt.secondsSinceEpoch,
                appID: appID,
                headers: [
                    (BridgeHeader.envelopeVersion, .int(EventEnvelope.formatVersion)),
                    (BridgeHeader.unrecognisedReason, .string("event cannot travel as an AMQP message: \(problem)")),
                ]),
            body: envelope.body,
            mandatory: true)
    }

    private func eventMessage(for envelope: EventEnvelope, receivedAt: UTCTimestamp) -> AMQPOutboundMessage {
        var headers: [(String, AMQPHeaderValue)] = []
        // At most these four: one allocation, not three as it grows (with tracing on, the trace
        // headers are added later, and one more).
        headers.reserveCapacity(4)
        headers.append((BridgeHeader.envelopeVersion, .int(EventEnvelope.formatVersion)))
        if let model = envelope.subjectModel { headers.append((BridgeHeader.subjectModel, .string(model))) }
        switch envelope.subjectID {
        case .number(let literal)?:
            headers.append((BridgeHeader.subjectID, Int64(literal).map(AMQPHeaderValue.int) ?? .string(literal)))
        case .string(let text)?:
            headers.append((BridgeHeader.subjectID, .string(text)))
        default:
            break
        }
        if let branch = envelope.branch { headers.append((BridgeHeader.branch, .int(branch))) }
        return AMQPOutboundMessage(
            exchange: exchange,
            routingKey: envelope.action,
            properties: AMQPProperties(
                contentType: "application/json",
                persistent: true,
                messageID: envelope.eventID,
                type: envelope.action,
                timestamp: receivedAt.secondsSinceEpoch,
                appID: appID,
                headers: headers),
            body: envelope.body,
            mandatory: true)
    }

    /// The raw body, unchanged, for routing key `unrecognised`. Its `message_id` is
    /// `<hex SHA-256 of the body>-raw`, stable across sender retries.
    public func unrecognisedMessage(
        body: [UInt8], bodyDigest: String, path: String, reason: String, receivedAt: UTCTimestamp
    ) -> AMQPOutboundMessage {
        let isJSON = !reason.hasPrefix("not JSON")
        return AMQPOutboundMessage(
            exchange: exchange,
            routingKey: Self.unrecognisedRoutingKey,
            properties: AMQPProperties(
                contentType: isJSON ? "application/json" : "application/octet-stream",
                persistent: true,
                messageID: "\(bodyDigest)-raw",
                type: Self.unrecognisedRoutingKey,
                timestamp: receivedAt.secondsSinceEpoch,
                appID: appID,
                headers: [
                    (BridgeHeader.requestPath, .string(String(decoding: path.utf8.prefix(1024), as: UTF8.self))),
                    (BridgeHeader.unrecognisedReason, .string(String(reason.prefix(200)))),
                ]),
            body: body,
            mandatory: true)
    }
}
