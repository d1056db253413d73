import Testing
import YAML

/// The YAML composer on libyaml: the tree, lines, types, and the limits that keep a hostile
/// document cheap.
struct YAMLComposerTests {
    @Test func composesMappingsSequencesAndScalarsWithTheirLines() throws {
        let root = try #require(try YAMLComposer.compose("""
            # a comment
            name: gate
            ports: [80, 443]
            nested:
              on: yes
              quoted: "12"
            """))
        guard case .mapping(let top) = root else { Issue.record("not a mapping"); return }
        #expect(top.map { $0.key.string } == ["name", "ports", "nested"])
        #expect(top["name"]?.mark?.line == 2)
        guard case .sequence(let ports)? = top["ports"] else { Issue.record("no ports"); return }
        #expect(ports.map { $0.string } == ["80", "443"])
        guard case .scalar(let port)? = ports.first else { return }
        #expect(port.tag == .int)
        guard case .mapping(let nested)? = top["nested"], case .scalar(let quoted)? = nested["quoted"], case .scalar(let on)? = nested["on"] else {
            Issue.record("no nested")
            return
        }
        #expect(quoted.tag == .str && quoted.style == .doubleQuoted)
        #expect(on.bool == true)
        #expect(nested.first?.key.mark?.line == 5)
    }

    @Test func plainScalarsResolveAsYAML11() {
        func tag(_ text: String) -> YAMLNode.Tag? {
            guard case .mapping(let m)? = try? YAMLComposer.compose("v: \(text)"), case .scalar(let s)? = m["v"] else { return nil }
            return s.tag
        }
        #expect(tag("~") == .null && tag("null") == .null && tag("") == .null)
        #expect(tag("true") == .bool && tag("off") == .bool)
        #expect(tag("-12") == .int && tag("1.5") == .float && tag("1e5") == .str)
        #expect(tag("'true'") == .str && tag("!!str 12") == .str && tag("abc") == .str)
    }

    @Test func keepsDuplicateKeysForTheReaderToReport() throws {
        guard case .mapping(let m)? = try YAMLComposer.compose("a: 1\nb: 2\na: 3\n") else { Issue.record("not a mapping"); return }
        #expect(m.map { $0.key.string } == ["a", "b", "a"])
        #expect(m["a"]?.string == "3")
    }

    @Test func aliasesStandForTheirAnchors() throws {
        guard case .mapping(let m)? = try YAMLComposer.compose("base: &b {x: 1}\ncopy: *b\n") else { Issue.record("not a mapping"); return }
        #expect(m["copy"] == m["base"])
    }

    @Test func refusesBadDocumentsWithTheirLine() {
        func error(_ text: String, limits: YAMLComposer.Limits = .init()) -> YAMLError? {
            do {
                _ = try YAMLComposer.compose(text, limits: limits)
                return nil
            } catch { return error }
        }
        let syntax = error("a: 1\nb: [1, 2\nc: 3\n")
        #expect(syntax?.kind == .syntax && (syntax?.line ?? 0) >= 2, "\(String(describing: syntax))")
        #expect(error("a: *nowhere\n")?.message == "unknown alias \"nowhere\"")
        #expect(error("a: 1\n---\nb: 2\n")?.message.hasPrefix("expected a single document") == true)
        // Billion laughs: nine levels of ten aliases stand for a billion nodes.
        var laughs = "a: &a [x, x, x, x, x, x, x, x, x, x]\n"
        for level in 1..<9 {
            let previous = Character(UnicodeScalar(UInt8(ascii: "a") + UInt8(level - 1)))
            let name = Character(UnicodeScalar(UInt8(ascii: "a") + UInt8(level)))
            laughs += "\(name): &\(name) [" + Array(repeating: "*\(previous)", count: 10).joined(separator: ", ") + "]\n"
        }
        #expect(error(laughs)?.message.hasPrefix("more than 200000 nodes") == true)
        // Nesting past the limit is refused before any reader recurses into it.
        let deep = String(repeating: "[", count: 10_000) + String(repeating: "]", count: 10_000)
        #expect(error(deep)?.message == "nested deeper than 256 levels")
        #expect(try! YAMLComposer.compose("# nothing\n") == nil)
    }
}
