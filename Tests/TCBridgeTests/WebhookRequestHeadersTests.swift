import HTTPTypes
import Testing

@testable import TCBridge

/// The webhook route's one pass over a request's header fields reads what `HTTPFields`' subscript
/// would: a repeated field's values joined with ", ".
@Suite struct WebhookRequestHeadersTests {
    let signatureName = HTTPField.Name("webhook-signature")!

    static func fields(_ pairs: [(String, String)]) -> HTTPFields {
        HTTPFields(pairs.map { HTTPField(name: HTTPField.Name($0.0)!, value: $0.1) })
    }

    @Test(arguments: [
        [("webhook-signature", "abc"), ("Content-Length", "12")],
        [("Webhook-Signature", "a"), ("host", "x"), ("WEBHOOK-SIGNATURE", "b")],
        [("content-length", "5"), ("content-length", "5"), ("Transfer-Encoding", "chunked")],
        [("transfer-encoding", "gzip"), ("transfer-encoding", "chunked")],
        [("accept", "*/*")],
        [],
    ])
    func readsWhatTheSubscriptWould(_ fields: [(String, String)]) {
        let headers = Self.fields(fields)
        let read = WebhookRequestHeaders(headers, signatureName: signatureName)
        #expect(read.signature == headers[signatureName])
        #expect(read.contentLength == headers[.contentLength])
        #expect(read.hasTransferEncoding == (headers[.transferEncoding] != nil))
    }

    /// As many fields as Hummingbird's decoder lets through (1000).
    @Test func aThousandRepeatsAreJoinedLikeTheSubscriptJoinsThem() {
        let fields = Self.fields((0..<1000).map { ("webhook-signature", String(repeating: "\($0 % 10)", count: 64)) })
        let read = WebhookRequestHeaders(fields, signatureName: signatureName)
        #expect(read.signature == fields[signatureName])
        #expect(read.signature?.utf8.count == 1000 * 64 + 999 * 2)
    }

    @Test func aRepeatedFieldIsItsValuesJoinedInOrder() {
        let fields = Self.fields([("webhook-signature", "first"), ("content-length", "1"), ("webhook-signature", "second")])
        let read = WebhookRequestHeaders(fields, signatureName: signatureName)
        #expect(read.signature == "first, second")
        #expect(read.contentLength == "1")
        #expect(!read.hasTransferEncoding)
    }
}
