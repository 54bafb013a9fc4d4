import Foundation

enum Fixture {
    static func bytes(_ name: String) throws -> [UInt8] {
        let url = try #require(Bundle.module.url(forResource: name, withExtension: nil, subdirectory: "Fixtures"))
        return Array(try Data(contentsOf: url))
    }

    static let examples = [
        "changed-contractor-status.2021.json",
        "changed-contractor-status.2023.json",
        "created-a-contractor.2025.json",
    ]
}

import Testing
