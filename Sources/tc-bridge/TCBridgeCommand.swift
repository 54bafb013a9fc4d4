import ArgumentParser

@main
struct TCBridgeCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "tc-bridge",
        abstract: "Verified TutorCruncher webhooks in; one confirmed, persistent RabbitMQ message per event out.",
        subcommands: [ServeCommand.self, SignCommand.self],
        defaultSubcommand: nil
    )
}
