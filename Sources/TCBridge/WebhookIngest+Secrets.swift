import Logging
import Metrics
import TutorCruncher
import TutorCruncherSignature

// i7-secrets: the replay-window step and the reloadable key set of `WebhookIngest`, kept apart
// from its main flow.
extension WebhookIngest {
    /// The key set for this request: one snapshot of the keyring (see ``SigningKeyring``).
    var verifier: WebhookVerifier { keyring.verifier }

    /// Runs after the signature is verified, before dedup. Returns the 403 for a body whose
    /// `request_time` (`time`, read from the body) lies outside the replay window (counted and
    /// logged with the body's SHA-256, `bodySHA256`, which the caller has computed once for the
    /// request), or `nil` to go on. Bodies without a usable time go on and are counted. Never throws,
    /// never traps on any bytes.
    func replayRefusal(_ time: @autoclosure () -> RequestTime, bodySHA256: String, path: String) -> IngestResponse? {
        guard let replayWindow else { return nil }
        let now = Double(DedupWindow.wallClock()) / 1000
        switch replayWindow.check(time(), now: now) {
        case .fresh:
            return nil
        case .absent:
            Counter(label: "tcbridge_request_time_unusable_total", dimensions: [("reason", "absent")]).increment()
            logger.debug("webhook without request_time; replay window not applied", metadata: ["path": "\(path)"])
            return nil
        case .notANumber:
            Counter(label: "tcbridge_request_time_unusable_total", dimensions: [("reason", "not_a_number")]).increment()
            logger.info("webhook request_time is not a number; replay window not applied", metadata: ["path": "\(path)"])
            return nil
        case .tooOld(let age):
            logger.notice(
                "rejected webhook: request_time older than the replay window",
                metadata: [
                    "path": "\(path)", "age_seconds": "\(Self.rounded(age))", "max_age": "\(replayWindow.maxAge)",
                    "body_sha256": "\(bodySHA256)",
                ])
            return .error(403, "request_time too old", .requestTimeTooOld)
        case .inFuture(let ahead):
            logger.notice(
                "rejected webhook: request_time too far in the future",
                metadata: [
                    "path": "\(path)", "ahead_seconds": "\(Self.rounded(ahead))", "max_future_skew": "\(replayWindow.maxFutureSkew)",
                    "body_sha256": "\(bodySHA256)",
                ])
            return .error(403, "request_time in the future", .requestTimeInFuture)
        }
    }

    /// Whole seconds for logs; huge or infinite values stay readable instead of trapping.
    private static func rounded(_ seconds: Double) -> String {
        abs(seconds) < 1e15 ? String(Int64(seconds.rounded())) : "\(seconds)"
    }
}
