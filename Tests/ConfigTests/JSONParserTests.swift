import Config
import Foundation
import Testing

/// Our JSON reader against Foundation's `JSONSerialization`: the same values from generated
/// documents (escapes, surrogate pairs, numbers, nesting), and the same verdict on text that
/// is not JSON.
@Suite struct JSONParserTests {
    struct Generator {
        var state: UInt64
        mutating func next() -> UInt64 {
            state = state &* 6364136223846793005 &+ 1442695040888963407
            return state >> 33
        }
        mutating func below(_ n: Int) -> Int { Int(next() % UInt64(n)) }

        mutating func string() -> String {
            let pieces = ["a", "Z", "0", " ", "\"", "\\", "/", "\n", "\t", "\u{1}", "\u{1f}", "é", "€", "😀", "~", "\u{7f}", "𝄞"]
            return (0..<below(8)).map { _ in pieces[below(pieces.count)] }.joined()
        }

        mutating func value(depth: Int = 0) -> JSONValue {
            switch below(depth > 4 ? 5 : 7) {
            case 0: return .null
            case 1: return .bool(below(2) == 0)
            case 2: return .int(Int(Int64(bitPattern: next() << 20)) / (below(2) == 0 ? 1 : 1 << 40))
            case 3: return .double(Double(below(100_000)) + [0.5, 0.25, 0.125, 0.75][below(4)])
            case 4: return .string(string())
            case 5: return .array((0..<below(5)).map { _ in value(depth: depth + 1) })
            default:
                var members: [String: JSONValue] = [:]
                for _ in 0..<below(5) { members[string()] = value(depth: depth + 1) }
                return .object(members)
            }
        }
    }

    /// Foundation's reading, through its own writer, read back by ours.
    static func viaFoundation(_ text: String) -> JSONValue? {
        guard let object = try? JSONSerialization.jsonObject(with: Data(text.utf8), options: [.fragmentsAllowed]),
            let data = try? JSONSerialization.data(withJSONObject: object, options: [.fragmentsAllowed, .sortedKeys])
        else { return nil }
        guard case .success(let value) = JSONValue.parse(Array(data)) else { return nil }
        return value
    }

    @Test func readsWhatFoundationReadsOnGeneratedDocuments() {
        var g = Generator(state: 42)
        for _ in 0..<2000 {
            let value = g.value()
            for text in [value.canonicalText, value.prettyText] {
                guard case .success(let ours) = JSONValue.parse(Array(text.utf8)) else {
                    Issue.record("refused \(text)")
                    continue
                }
                #expect(ours == value)
                #expect(Self.viaFoundation(text) == value, "\(text)")
            }
        }
    }

    @Test func escapesAndSurrogatePairs() {
        let text = #"["\u00e9\u20ac\ud83d\ude00\/\b\f\n\r\t\"\\"]"#
        guard case .success(let value) = JSONValue.parse(Array(text.utf8)) else {
            Issue.record("refused")
            return
        }
        #expect(value == .array([.string("é€😀/\u{8}\u{c}\n\r\t\"\\")]))
        #expect(Self.viaFoundation(text) == value)
    }

    @Test func refusesWhatIsNotJSONAsFoundationDoes() {
        let bad = [
            "", " ", "{", "[01]", "[1.]", "[.5]", "[1e]", "[-]", "[+1]", "[\"a\nb\"]", "[\"\\x\"]", "[\"\\ud800\"]",
            "[\"\\udc00\"]", "[tru]", "[nul]", "{a:1}", "{\"a\" 1}", "[1 2]", "[1]x", "'a'", "[NaN]", "[Infinity]", "[\"\\u12\"]",
        ]
        for text in bad {
            if case .success = JSONValue.parse(Array(text.utf8)) { Issue.record("accepted \(text)") }
            #expect((try? JSONSerialization.jsonObject(with: Data(text.utf8), options: [.fragmentsAllowed])) == nil, "Foundation accepted \(text)")
        }
        // Beyond Foundation: trailing commas (which it lets through) are not RFC 8259, one name
        // twice is ambiguous, and nesting is bounded.
        for text in ["[1,]", #"{"a":1,}"#] {
            if case .success = JSONValue.parse(Array(text.utf8)) { Issue.record("accepted \(text)") }
        }
        if case .success = JSONValue.parse(Array(#"{"a":1,"a":2}"#.utf8)) { Issue.record("accepted a duplicate name") }
        if case .success = JSONValue.parse(Array((String(repeating: "[", count: 200) + String(repeating: "]", count: 200)).utf8)) {
            Issue.record("accepted 200 levels")
        }
        // Not UTF-8.
        if case .success = JSONValue.parse([0x22, 0xff, 0x22]) { Issue.record("accepted invalid UTF-8") }
    }
}
