import Foundation
import TestSupport
import Testing

@Suite struct ReadmeExampleTests {
    @Test func readmeShowsTheCompiledExampleVerbatimInUnder25Lines() throws {
        let readme = try String(contentsOfFile: Repository.root + "/README.md", encoding: .utf8)
        let example = try String(contentsOfFile: Repository.root + "/Sources/example-billing-service/BillingService.swift", encoding: .utf8)
        #expect(readme.contains("```swift\n" + example + "```"))
        #expect(example.split(separator: "\n", omittingEmptySubsequences: false).count - 1 < 25)
    }
}
