import Foundation
import TestSupport
import Testing
import TutorCruncher
import TutorCruncherSignature

/// The `tc-bridge` executable's argument and environment handling.
@Suite struct CommandLineTests {
    func run(_ arguments: [String], environment: [String: String] = [:]) async throws -> (status: Int32, output: String) {
        var env = ProcessInfo.processInfo.environment
        for key in ["TC_PRIVATE_KEY", "TC_PRIVATE_KEY_FILE", "AMQP_URL", "AMQP_CA_FILE", "AMQP_CLIENT_CERT_FILE", "AMQP_CLIENT_KEY_FILE"] {
            env.removeValue(forKey: key)
        }
        for (key, value) in environment { env[key] = value }
        do {
            return (0, try await runProcess(BridgeProcess.executable, arguments, environment: env))
        } catch let failure as ProcessFailure {
            return (failure.status, failure.output)
        }
    }

    func temporaryFile(_ contents: [UInt8]) throws -> String {
        let path = NSTemporaryDirectory() + "tcbridge-\(UUID().uuidString)"
        #expect(FileManager.default.createFile(atPath: path, contents: Data(contents)))
        return path
    }

    @Test func serveRefusesToStartWithoutAKey() async throws {
        let result = try await run(["serve", "--port", "0"])
        #expect(result.status != 0)
        #expect(result.output.contains("no private API key configured"))
        #expect(result.output.contains("TC_PRIVATE_KEY"))
    }

    @Test func serveRejectsABadAMQPURLWithoutEchoingThePassword() async throws {
        let result = try await run(["serve", "--port", "0"], environment: ["TC_PRIVATE_KEY": "k", "AMQP_URL": "amqp://u:hunter2@host:notaport/"])
        #expect(result.status != 0)
        #expect(result.output.contains("invalid AMQP URL"))
        #expect(!result.output.contains("hunter2"))
    }

    @Test func serveRejectsAClientCertificateWithoutItsKey() async throws {
        let result = try await run(
            ["serve", "--port", "0", "--amqp-client-cert", "/etc/client.pem"],
            environment: ["TC_PRIVATE_KEY": "k", "AMQP_URL": "amqps://localhost/"])
        #expect(result.status != 0)
        #expect(result.output.contains("--amqp-client-cert and --amqp-client-key go together"))
    }

    @Test func serveRejectsAClientCertificateForPlainAMQP() async throws {
        let result = try await run(
            ["serve", "--port", "0"],
            environment: [
                "TC_PRIVATE_KEY": "k", "AMQP_URL": "amqp://localhost/", "AMQP_CLIENT_CERT_FILE": "/etc/client.pem",
                "AMQP_CLIENT_KEY_FILE": "/etc/client.key",
            ])
        #expect(result.status != 0)
        #expect(result.output.contains("--amqp-client-cert needs an amqps:// URL"))
    }

    @Test func serveRejectsAnUnreadableKeyFile() async throws {
        let result = try await run(["serve", "--private-key-file", "/nonexistent/key"])
        #expect(result.status != 0)
        #expect(result.output.contains("cannot read private key file /nonexistent/key"))
    }

    @Test func signPrintsTheSignatureFromTheEnvironmentKey() async throws {
        let body = Webhooks.body(actions: ["LOGIN"])
        let file = try temporaryFile(body)
        let result = try await run(["sign", file], environment: ["TC_PRIVATE_KEY": Webhooks.testKey])
        #expect(result.status == 0)
        #expect(result.output == Webhooks.sign(body) + "\n")
    }

    @Test func signReadsTheFirstKeyOfAKeyFile() async throws {
        let body = Array("{}".utf8)
        let keyFile = try temporaryFile(Array("  new-key  \nold-key\n".utf8))
        let result = try await run(["sign", "--private-key-file", keyFile, try temporaryFile(body)])
        #expect(result.output == WebhookVerifier.signature(for: body, key: WebhookSigningKey("new-key")) + "\n")
    }

    @Test func signWithoutKeyFails() async throws {
        let result = try await run(["sign", try temporaryFile([1, 2, 3])])
        #expect(result.status != 0)
        #expect(result.output.contains("no private API key configured"))
    }
}
