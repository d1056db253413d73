import NIOCore
import Testing

@testable import Proxy

/// A script's header changes in their byte store: what is written, dropped and read back.
@Suite struct HeaderEditsTests {
    private func written(_ edits: HeaderEdits, skipping skip: StaticString? = nil) -> String {
        var out = ByteBuffer()
        out.writeHead(estimate: edits.bytes + 64) { edits.write(into: &$0, skipping: skip) }
        return String(buffer: out)
    }

    private func values(_ edits: HeaderEdits, _ name: String) -> [String] {
        var found: [String] = []
        var name = name
        name.withUTF8 { n in
            _ = edits.forEachValue(named: UnsafeRawBufferPointer(n)) { found.append(String(decoding: $0, as: UTF8.self)); return true }
        }
        return found
    }

    private func drops(_ edits: HeaderEdits, _ name: String) -> Bool {
        Array(name.utf8).withUnsafeBytes { edits.drops($0, 0, $0.count) }
    }

    @Test func setAddAndRemoveInAnyOrderAndCase() {
        var e = HeaderEdits()
        e.add("Vary", "Origin")
        e.add("vary", "Accept")
        #expect(values(e, "VARY") == ["Origin", "Accept"])
        #expect(!drops(e, "vary"))  // adds keep the message's own fields
        Array("X-User".utf8).withUnsafeBytes { n in Array("ann".utf8).withUnsafeBytes { e.set(n, $0) } }
        Array("x-user".utf8).withUnsafeBytes { n in Array("bob".utf8).withUnsafeBytes { e.set(n, $0) } }
        #expect(values(e, "X-USER") == ["bob"])  // a set replaces what was set before
        #expect(drops(e, "X-User"))
        Array("X-Debug".utf8).withUnsafeBytes { e.set($0, nil) }
        #expect(drops(e, "x-debug") && values(e, "x-debug").isEmpty && e.contains("x-debug"))
        e.add("X-Debug", "again")  // an add after a remove: the original stays dropped
        #expect(drops(e, "x-debug") && values(e, "x-debug") == ["again"])
        #expect(written(e) == "Vary: Origin\r\nvary: Accept\r\nx-user: bob\r\nX-Debug: again\r\n")
    }

    @Test func skipsHostAndWritesTheFirstValueOfAName() {
        var e = HeaderEdits()
        e.add("Host", "a.example")
        e.add("X-A", "1")
        #expect(written(e, skipping: "host") == "X-A: 1\r\n")
        var out = ByteBuffer()
        out.writeHead(estimate: 64) { w in #expect(e.writeFirstValue(of: "host", into: &w)) }
        #expect(String(buffer: out) == "a.example")
        out.writeHead(estimate: 64) { w in #expect(!e.writeFirstValue(of: "x-b", into: &w)) }
    }

    @Test func mergeAddsOnlyNamesNotAlreadyThere() {
        var early = HeaderEdits()
        early.add("Content-Type", "text/plain")
        var response = HeaderEdits()
        response.add("content-type", "application/json")
        response.add("Vary", "Origin")
        response.add("Vary", "Accept")
        Array("X-Gone".utf8).withUnsafeBytes { response.set($0, nil) }
        early.merge(response)
        #expect(written(early) == "Content-Type: text/plain\r\nVary: Origin\r\nVary: Accept\r\n")
    }

    @Test func numbersAndGrowthAndReuse() {
        var e = HeaderEdits()
        e.add("RateLimit-Remaining", decimal: 0)
        e.add("RateLimit-Limit", decimal: 1_000_000_000)
        e.add("X-Neg", decimal: -42)
        #expect(written(e) == "RateLimit-Remaining: 0\r\nRateLimit-Limit: 1000000000\r\nX-Neg: -42\r\n")
        let long = String(repeating: "v", count: 5000)
        for i in 0..<20 { e.add("X-\(i)", long) }  // past the first store, and past the kept size
        #expect(values(e, "x-19") == [long] && values(e, "x-neg") == ["-42"])
        e.removeAll()
        #expect(e.isEmpty && e.bytes == 0 && written(e).isEmpty)
        e.add("X-After", "1")
        #expect(written(e) == "X-After: 1\r\n")
    }
}
