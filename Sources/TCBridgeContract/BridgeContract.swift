/// The message contract between `tc-bridge` and the services that consume its messages: exchange
/// names, routing keys and header names. Both sides import it from here, so they cannot drift.
/// No dependencies.
public enum BridgeContract {
    /// The topic exchange the bridge publishes to unless configured otherwise.
    public static let defaultExchange = "tutorcruncher"

    /// The alternate exchange (and its queue) of `exchange`, keeping events no service is bound for.
    public static func alternateExchange(for exchange: String) -> String { "\(exchange).unroutable" }

    /// Routing key (and `type`) of bodies or events that are not a recognisable event, published
    /// unchanged with ``Header/unrecognisedReason``.
    public static let unrecognisedRoutingKey = "unrecognised"

    /// AMQP headers the bridge sets on every message.
    public enum Header {
        /// `subject.model` of the event (string), absent when the event has no subject.
        public static let subjectModel = "tc-subject-model"
        /// `subject.id` (integer, or string when the sender sends a string).
        public static let subjectID = "tc-subject-id"
        /// The event's `branch` (integer), absent when the event has none.
        public static let branch = "tc-branch"
        /// The envelope format version (integer); see ``BridgeContract/envelopeFormatVersion``.
        public static let envelopeVersion = "tc-envelope-version"
        /// On `unrecognised` messages: the HTTP request path the body was posted to.
        public static let requestPath = "tc-request-path"
        /// On `unrecognised` messages: why the body is not an event batch.
        public static let unrecognisedReason = "tc-unrecognised-reason"
    }

    /// Bumped on any incompatible change to the envelope's layout.
    public static let envelopeFormatVersion: Int64 = 1
}
