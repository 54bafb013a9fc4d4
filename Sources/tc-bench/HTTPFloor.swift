import ArgumentParser
import Hummingbird
import NIOCore

extension TCBenchCommand {
    /// The HTTP framework alone: Hummingbird on the same event loops as the bridge, reading each
    /// `POST /webhook` body whole and answering `{"events":1}` without verifying, parsing or
    /// publishing anything. What the bridge costs above this is the bridge's own work.
    struct HTTPFloor: AsyncParsableCommand {
        static let configuration = CommandConfiguration(
            commandName: "http-floor", abstract: "Hummingbird alone: read each POST body, answer 200, publish nothing.")
        @Option var port: Int
        @Option(help: "Answer this long after the body is read, as the bridge answers after the broker's confirm (0: at once).")
        var answerAfterMs = 0

        func run() async throws {
            let router = Router()
            let delay = Duration.milliseconds(answerAfterMs)
            router.post("webhook") { request, _ -> Response in
                var bytes = 0
                for try await chunk in request.body { bytes += chunk.readableBytes }
                if delay > .zero { try await Task.sleep(for: delay) }
                return Response(
                    status: .ok, headers: [.contentType: "application/json"],
                    body: ResponseBody(byteBuffer: ByteBuffer(string: bytes > 0 ? "{\"events\":1}\n" : "{\"events\":0}\n")))
            }
            router.get("health") { _, _ in "ok" }
            let app = Application(router: router, configuration: .init(address: .hostname("127.0.0.1", port: port)))
            try await app.runService()
        }
    }
}
