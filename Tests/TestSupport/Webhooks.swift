import Foundation
import TutorCruncher
import TutorCruncherSignature

/// Builds signed webhook bodies for tests.
public enum Webhooks {
    public static let testKey = "test-private-api-key"
    public static let verifier = WebhookVerifier(key: WebhookSigningKey(testKey))

    public static func sign(_ body: [UInt8], key: String = testKey) -> String {
        WebhookVerifier.signature(for: body, key: WebhookSigningKey(key))
    }

    /// A body in the sender's current layout (`json.dumps` separators), one event per element of `actions`.
    /// `requestTime` defaults to now (the bridge refuses bodies older than its replay window).
    public static func body(
        actions: [String], subjectID: Int = 1, requestTime: Int? = Int(Date().timeIntervalSince1970), marker: String = UUID().uuidString
    ) -> [UInt8] {
        let events = actions.enumerated().map { index, action in
            """
            {"action": "\(action)", "verb": "Did \(action)", "timestamp": "2025-03-05T15:26:20.558919Z", "branch": 590, \
            "actor": {"name": "Tester", "id": 7, "user_id": 8, "url": ""}, "extra_msg": "\(marker)", \
            "subject": {"model": "Client", "url": "https://example.invalid/api/clients/\(subjectID + index)/", "id": \(subjectID + index), "amount": "55.90000"}}
            """
        }
        let time = requestTime.map { "\"request_time\": \($0), " } ?? ""
        return Array("{\(time)\"events\": [\(events.joined(separator: ", "))]}".utf8)
    }
}
