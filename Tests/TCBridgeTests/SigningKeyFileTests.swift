import AMQPClient
import Dispatch
import Foundation
import HTTPTypes
import Hummingbird
import HummingbirdTesting
import Logging
import NIOCore
import Synchronization
@testable import TCBridge
import TestSupport
import Testing
import TutorCruncher
import TutorCruncherSignature

// Key files and the reloadable keyring.

@Suite struct SigningKeyFileTests {
    func file(_ text: String, mode: Int) throws -> String {
        let path = NSTemporaryDirectory() + "tcbridge-key-\(UUID().uuidString)"
        #expect(FileManager.default.createFile(atPath: path, contents: Data(text.utf8), attributes: [.posixPermissions: mode]))
        return path
    }

    @Test func readsOneKeyPerLine() throws {
        let path = try file("  new-key \r\n\n\told-key\n", mode: 0o600)
        let keys = try SigningKeyFile.load(path: path, allowInsecurePermissions: false)
        let verifier = WebhookVerifier(keys: keys)
        let body = Array("{}".utf8)
        #expect(keys.count == 2)
        #expect(verifier.verify(body: body, signatureHeader: Webhooks.sign(body, key: "new-key")) == .valid)
        #expect(verifier.verify(body: body, signatureHeader: Webhooks.sign(body, key: "old-key")) == .valid)
        #expect(WebhookVerifier.signature(for: body, key: keys[0]) == Webhooks.sign(body, key: "new-key"))
    }

    @Test(arguments: [0o640, 0o604, 0o660, 0o666, 0o620])
    func refusesAFileOthersMayAccess(mode: Int) throws {
        let path = try file("secret-key-value\n", mode: mode)
        #expect(throws: SigningKeyFileError.insecurePermissions(path: path, mode: UInt32(mode))) {
            try SigningKeyFile.load(path: path, allowInsecurePermissions: false)
        }
        #expect(try SigningKeyFile.load(path: path, allowInsecurePermissions: true).count == 1)
    }

    @Test func refusesBlankFilesAndDirectoriesWithoutShowingContents() throws {
        let blank = try file("  \n\t\n \r\n", mode: 0o600)
        #expect(throws: SigningKeyFileError.empty(path: blank)) { try SigningKeyFile.load(path: blank, allowInsecurePermissions: false) }
        #expect(throws: SigningKeyFileError.notARegularFile(path: NSTemporaryDirectory())) {
            try SigningKeyFile.load(path: NSTemporaryDirectory(), allowInsecurePermissions: true)
        }
        let insecure = try file("secret-key-value\n", mode: 0o644)
        do {
            _ = try SigningKeyFile.load(path: insecure, allowInsecurePermissions: false)
            Issue.record("a mode 644 key file was accepted")
        } catch {
            #expect(!error.description.contains("secret-key-value"))
            #expect(error.description.contains("mode 644"))
        }
    }

    /// A FIFO nobody writes to is refused at once: opening it for reading would otherwise wait for
    /// a writer forever, holding the thread that reloads (an event loop, on SIGHUP).
    @Test(.timeLimit(.minutes(1))) func refusesAFIFOWithoutWaitingForAWriter() throws {
        let path = NSTemporaryDirectory() + "tcbridge-key-fifo-\(UUID().uuidString)"
        try #require(mkfifo(path, 0o600) == 0)
        defer { unlink(path) }
        #expect(throws: SigningKeyFileError.notARegularFile(path: path)) {
            try SigningKeyFile.load(path: path, allowInsecurePermissions: false)
        }
    }

    @Test func theKeyringSwapsAtomically() {
        let keyring = SigningKeyring(WebhookVerifier(key: WebhookSigningKey("one")))
        let body = Array("{}".utf8)
        let snapshot = keyring.verifier
        keyring.replace(WebhookVerifier(key: WebhookSigningKey("two")))
        #expect(snapshot.verify(body: body, signatureHeader: Webhooks.sign(body, key: "one")) == .valid)
        #expect(keyring.verifier.verify(body: body, signatureHeader: Webhooks.sign(body, key: "one")) == .mismatch)
        #expect(keyring.verifier.verify(body: body, signatureHeader: Webhooks.sign(body, key: "two")) == .valid)
    }
}
