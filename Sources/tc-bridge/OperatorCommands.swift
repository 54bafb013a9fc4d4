import AMQPClient
import ArgumentParser
import DurableSpool
import TCBridge
import TCBridgeContract

#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

/// `tc-bridge spool ...`: what waits in the spool, and what was set aside. Reads the files without
/// taking the spool's lock, so it is safe beside a running bridge.
struct SpoolCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "spool",
        abstract: "Inspect the spool, and re-publish or delete records set aside in its corrupt/ directory.",
        subcommands: [List.self, Show.self, Replay.self, Purge.self])

    struct Location: ParsableArguments {
        @Option(help: "The spool directory (env: TC_BRIDGE_SPOOL_DIR; default /var/lib/tc-bridge/spool).")
        var spoolDir: String?

        var directory: String { Environment.resolve(spoolDir, env: "TC_BRIDGE_SPOOL_DIR", default: "/var/lib/tc-bridge/spool") }
    }

    /// The messages of a spool record's payload, or why it cannot be read.
    static func messages(of payload: [UInt8]) -> Result<[AMQPOutboundMessage], SpooledMessages.DecodingError> {
        Result { () throws(SpooledMessages.DecodingError) in try SpooledMessages.decode(payload) }
    }

    struct List: ParsableCommand {
        static let configuration = CommandConfiguration(abstract: "One line per segment and per set-aside record.")
        @OptionGroup var location: Location

        func run() throws {
            let inspector = SpoolInspector(directory: location.directory)
            let segments = try inspector.segments()
            var total = 0
            for segment in segments {
                let messages = segment.records.reduce(0) { count, record in count + ((try? SpoolCommand.messages(of: record.payload).get())?.count ?? 0) }
                total += segment.records.count
                print("segment \(segment.sequence)\t\(segment.records.count) records\t\(messages) messages\t\(segment.bytes) bytes\t\(segment.damagedSpans) damaged spans\t\(segment.path)")
            }
            print("\(total) records in \(segments.count) segments (a segment stays until all its records are confirmed: some may be delivered already)")
            for record in try inspector.setAside() {
                print("set aside\t\(record.bytes.count) bytes\t\(record.path)")
            }
        }
    }

    struct Show: ParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Print a segment's messages (routing key, message id, body), or one record's with --offset.")
        @OptionGroup var location: Location
        @Argument(help: "Segment number (from `spool list`).") var segment: UInt64
        @Option(help: "Only the record at this byte offset.") var offset: Int?

        func run() throws {
            guard let found = try SpoolInspector(directory: location.directory).segments().first(where: { $0.sequence == segment }) else {
                throw ValidationError("no segment \(segment) in \(location.directory)")
            }
            for record in found.records where offset == nil || record.offset == offset {
                switch SpoolCommand.messages(of: record.payload) {
                case .success(let messages):
                    for message in messages {
                        print("offset \(record.offset)\t\(message.routingKey)\t\(message.properties.messageID ?? "-")\t\(String(decoding: message.body, as: UTF8.self))")
                    }
                case .failure(let error):
                    print("offset \(record.offset)\tunreadable: \(error)")
                }
            }
        }
    }

    struct Replay: AsyncParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Publish the records set aside in corrupt/ (confirmed by the broker), then move each to corrupt/replayed/.")
        @OptionGroup var location: Location
        @Option(help: "Broker URL (env: AMQP_URL).") var amqpURL: String?

        func run() async throws {
            let url = Environment.resolve(amqpURL, env: "AMQP_URL", default: "amqp://guest:guest@127.0.0.1:5672/%2F").split(separator: ",").first.map(String.init) ?? ""
            let admin = AMQPAdmin(connection: try AMQPConnectionConfiguration(url: url))
            let replayed = location.directory + "/corrupt/replayed"
            for record in try SpoolInspector(directory: location.directory).setAside() {
                let payload = record.bytes.withUnsafeBytes { SpoolInspector.payload(ofFramedOrRaw: $0) }
                guard case .success(let messages) = SpoolCommand.messages(of: payload) else {
                    print("skipped (not a record of messages): \(record.path)")
                    continue
                }
                try await admin.publishConfirmed(messages)
                mkdir(replayed, 0o700)
                let name = String(record.path.split(separator: "/").last ?? "")
                guard rename(record.path, replayed + "/" + name) == 0 else {
                    throw ValidationError("published, but cannot move \(record.path): \(String(cString: strerror(errno)))")
                }
                print("replayed \(messages.count) messages: \(record.path)")
            }
        }
    }

    struct Purge: ParsableCommand {
        static let configuration = CommandConfiguration(abstract: "Delete the records set aside in corrupt/ (the live spool is never touched).")
        @OptionGroup var location: Location
        @Flag(help: "Really delete.") var yes = false

        func run() throws {
            let records = try SpoolInspector(directory: location.directory).setAside()
            guard yes else {
                print("\(records.count) set-aside records would be deleted; run again with --yes")
                return
            }
            for record in records where unlink(record.path) == 0 { print("deleted \(record.path)") }
        }
    }
}

/// `tc-bridge unroutable ...`: events no service was bound for, kept by the alternate exchange's queue.
struct UnroutableCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "unroutable",
        abstract: "List the events kept in the unroutable queue, or publish them again once a consumer has bound.",
        subcommands: [List.self, Replay.self])

    struct Target: ParsableArguments {
        @Option(help: "Broker URL (env: AMQP_URL).") var amqpURL: String?
        @Option(help: "The bridge's exchange (env: TC_BRIDGE_EXCHANGE; default tutorcruncher).") var exchange: String?
        @Option(help: "At most this many messages.") var limit = 1000

        var exchangeName: String { Environment.resolve(exchange, env: "TC_BRIDGE_EXCHANGE", default: BridgeContract.defaultExchange) }
        var queue: String { BridgeContract.alternateExchange(for: exchangeName) }
        func admin() throws -> AMQPAdmin {
            let url = Environment.resolve(amqpURL, env: "AMQP_URL", default: "amqp://guest:guest@127.0.0.1:5672/%2F").split(separator: ",").first.map(String.init) ?? ""
            return AMQPAdmin(connection: try AMQPConnectionConfiguration(url: url))
        }
    }

    struct List: AsyncParsableCommand {
        static let configuration = CommandConfiguration(abstract: "Print the kept events (routing key, message id), leaving them in place.")
        @OptionGroup var target: Target

        func run() async throws {
            let messages = try await target.admin().peek(queue: target.queue, limit: max(1, target.limit))
            for message in messages { print("\(message.routingKey)\t\(message.properties.messageID ?? "-")\t\(message.body.count) bytes") }
            print("\(messages.count) messages shown from \(target.queue)")
        }
    }

    struct Replay: AsyncParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Publish the kept events to the exchange again (each confirmed before it leaves the queue). Those still unroutable come back.")
        @OptionGroup var target: Target

        func run() async throws {
            let exchange = target.exchangeName
            let moved = try await target.admin().move(queue: target.queue, limit: max(1, target.limit)) { message in
                AMQPOutboundMessage(exchange: exchange, routingKey: message.routingKey, properties: message.properties, body: message.body)
            }
            print("\(moved) messages published to \(exchange) again")
        }
    }
}
