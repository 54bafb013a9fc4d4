import ArgumentParser
import TutorCruncher
import TutorCruncherSignature

/// `tc-bridge sign FILE`: prints the `webhook-signature` TutorCruncher would send for FILE's bytes.
struct SignCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "sign",
        abstract: "Print the webhook-signature for a body file (key from TC_PRIVATE_KEY or --private-key-file).",
        discussion: """
            Example:
              curl -X POST http://127.0.0.1:8080/webhook -H 'content-type: application/json' \\
                -H "webhook-signature: $(tc-bridge sign body.json)" --data-binary @body.json
            """
    )

    @Argument(help: "File whose exact bytes are signed ('-' reads standard input).")
    var file: String

    @Option(help: "File holding the private API key (env: TC_PRIVATE_KEY_FILE). Default: env TC_PRIVATE_KEY.")
    var privateKeyFile: String?

    func run() throws {
        let keys = try Environment.signingKeys(file: privateKeyFile, allowInsecureFile: true).keys
        guard let body = Environment.readBytes(file == "-" ? "/dev/stdin" : file) else {
            throw ValidationError("cannot read \(file)")
        }
        print(WebhookVerifier.signature(for: body, key: keys[0]))
    }
}
