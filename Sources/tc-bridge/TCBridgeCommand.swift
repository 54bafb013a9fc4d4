import ArgumentParser

struct TCBridgeCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "tc-bridge",
        abstract: "Verified TutorCruncher webhooks in; one confirmed, persistent RabbitMQ message per event out.",
        subcommands: [ServeCommand.self, SignCommand.self, ProbeCommand.self, SpoolCommand.self, UnroutableCommand.self],
        defaultSubcommand: nil
    )
}

extension TCBridgeCommand {
    /// What `@main` would call: parse, then run the chosen command's async `run()`. (Top-level code
    /// in `main.swift` would pick `ParsableCommand`'s synchronous `main()`, which only prints help.)
    static func asyncMain() async {
        await main(nil)
    }
}
