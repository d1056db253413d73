import Config
import Testing

/// The helpers that stand in for the parts of Foundation the gateway leaves out, checked
/// against what those parts did.
struct SystemHelpersTests {
    @Test func pathsSplitAsNSStringDid() {
        #expect(FilePaths.lastComponent("a/b.yaml") == "b.yaml")
        #expect(FilePaths.lastComponent("a/b/") == "b")
        #expect(FilePaths.lastComponent("/") == "/")
        #expect(FilePaths.lastComponent("b.yaml") == "b.yaml")
        #expect(FilePaths.parent("a/b.yaml") == "a")
        #expect(FilePaths.parent("b.yaml") == "")
        #expect(FilePaths.parent("/b") == "/")
        #expect(FilePaths.parent("/x/y//") == "/x")
        #expect(FilePaths.resolve("s.lua", against: "") == "s.lua")
        #expect(FilePaths.resolve("/s.lua", against: "conf") == "/s.lua")
        #expect(FilePaths.resolve("s.lua", against: "conf") == "conf/s.lua")
    }

    @Test func fixedDecimalsMatchPrintf() {
        #expect(0.0954.fixed(3) == "0.095")
        #expect(12.0.fixed(0) == "12")
        #expect(99.96.fixed(1) == "100.0")
        #expect((-1.26).fixed(1) == "-1.3")
        #expect((-0.0001).fixed(2) == "0.00")
        #expect(0.000001.fixed(6) == "0.000001")
        #expect("ab".padded(left: 4) == "  ab" && "ab".padded(right: 4) == "ab  ")
    }

    @Test func filesReadWithTheSystemsReason() throws {
        #expect(throws: FileReading.Failure.self) { try FileReading.text("/nonexistent/moongate") }
        do {
            _ = try FileReading.text("/nonexistent/moongate")
        } catch {
            #expect(error.description == "No such file or directory")
        }
        #expect(try FileReading.bytes("/proc/self/statm").count > 0)
        #expect(" \t a b \r\n".trimmingWhitespace() == "a b")
        #expect(" \ta b\t ".trimmingSpaces() == "a b")
    }
}
