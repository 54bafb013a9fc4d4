import CRabbitMQ

/// Builds rabbitmq-c field tables from Swift values and keeps every pointer alive for the
/// duration of one C call. Thread-confined to the connection owner.
enum FieldTable {
    /// Calls `body` with an `amqp_table_t` holding `entries`; the table is valid only inside `body`.
    static func with<R>(_ entries: [(String, AMQPHeaderValue)], _ body: (amqp_table_t) throws -> R) rethrows -> R {
        if entries.isEmpty { return try body(amqp_table_t(num_entries: 0, entries: nil)) }
        // One arena for every string, freed when the call returns.
        var arena = StringArena()
        defer { arena.free() }
        var cEntries: [amqp_table_entry_t] = []
        cEntries.reserveCapacity(entries.count)
        for (key, value) in entries {
            var field = amqp_field_value_t()
            switch value {
            case .string(let text):
                field.kind = tcb_kind_utf8()
                field.value.bytes = arena.bytes(text)
            case .int(let number):
                field.kind = tcb_kind_i64()
                field.value.i64 = number
            case .bool(let flag):
                field.kind = tcb_kind_boolean()
                field.value.boolean = flag ? 1 : 0
            }
            cEntries.append(amqp_table_entry_t(key: arena.bytes(key), value: field))
        }
        return try cEntries.withUnsafeMutableBufferPointer { buffer in
            try body(amqp_table_t(num_entries: Int32(buffer.count), entries: buffer.baseAddress))
        }
    }

    /// Copies a table received from the broker into Swift values (valid until the next buffer release).
    static func decode(_ table: amqp_table_t) -> [(String, AMQPHeaderValue)] {
        guard table.num_entries > 0, let entries = table.entries else { return [] }
        var result: [(String, AMQPHeaderValue)] = []
        for index in 0..<Int(table.num_entries) {
            let entry = entries[index]
            let key = String(amqpBytes: entry.key)
            let value: AMQPHeaderValue
            switch Character(Unicode.Scalar(entry.value.kind)) {
            case "S", "x": value = .string(String(amqpBytes: entry.value.value.bytes))
            case "t": value = .bool(entry.value.value.boolean != 0)
            case "b": value = .int(Int64(entry.value.value.i8))
            case "B": value = .int(Int64(entry.value.value.u8))
            case "s": value = .int(Int64(entry.value.value.i16))
            case "u": value = .int(Int64(entry.value.value.u16))
            case "I": value = .int(Int64(entry.value.value.i32))
            case "i": value = .int(Int64(entry.value.value.u32))
            case "l": value = .int(entry.value.value.i64)
            case "L", "T": value = .int(Int64(bitPattern: entry.value.value.u64))
            default: continue  // Nested tables, arrays, floats: not used by TCBridge; skipped.
            }
            result.append((key, value))
        }
        return result
    }
}

/// Malloc'd copies of strings for one C call.
struct StringArena {
    private var allocations: [UnsafeMutableRawPointer] = []

    mutating func bytes(_ text: String) -> amqp_bytes_t {
        let utf8 = Array(text.utf8)
        return bytes(utf8)
    }

    mutating func bytes(_ data: [UInt8]) -> amqp_bytes_t {
        let memory = UnsafeMutableRawPointer.allocate(byteCount: max(data.count, 1), alignment: 1)
        data.withUnsafeBytes { source in
            // An empty value (an empty string header) has nothing to copy, and may have no address.
            if let base = source.baseAddress, source.count > 0 { memory.copyMemory(from: base, byteCount: source.count) }
        }
        allocations.append(memory)
        return amqp_bytes_t(len: data.count, bytes: memory)
    }

    func free() {
        for allocation in allocations { allocation.deallocate() }
    }
}

extension String {
    /// Copies rabbitmq-c bytes into a Swift string (invalid UTF-8 is repaired, not trusted).
    init(amqpBytes bytes: amqp_bytes_t) {
        guard bytes.len > 0, let base = bytes.bytes else {
            self = ""
            return
        }
        self = String(decoding: UnsafeRawBufferPointer(start: base, count: bytes.len), as: UTF8.self)
    }
}

extension Array where Element == UInt8 {
    init(amqpBytes bytes: amqp_bytes_t) {
        guard bytes.len > 0, let base = bytes.bytes else {
            self = []
            return
        }
        self = Array(UnsafeRawBufferPointer(start: base, count: bytes.len))
    }
}
