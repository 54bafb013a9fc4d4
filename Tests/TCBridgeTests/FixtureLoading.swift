import TestSupport

enum Fixture {
    static let examples = [
        "changed-contractor-status.2021.json",
        "changed-contractor-status.2023.json",
        "created-a-contractor.2025.json",
    ]

    static func bytes(_ name: String) throws -> [UInt8] { Repository.fixture(name) }
}
