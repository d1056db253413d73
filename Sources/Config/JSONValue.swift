import FoundationEssentials
import YAML

/// A JSON document as a value: what the admin API reads and writes, and what the config store
/// keeps. Control plane only, never on a request's path.
public enum JSONValue: Sendable, Hashable {
    case null
    case bool(Bool)
    case int(Int)
    case double(Double)
    case string(String)
    case array([JSONValue])
    case object([String: JSONValue])

    /// Parses JSON text (RFC 8259; duplicate member names and nesting deeper than 128 are
    /// refused); a failure says where and why.
    public static func parse(_ bytes: some Collection<UInt8>) -> Result<JSONValue, JSONParseError> {
        JSONParser.parse(Array(bytes))
    }

    /// Compact JSON with object keys sorted: the same value always gives the same text, so its
    /// digest is a version tag.
    public var canonicalText: String {
        var out = ""
        write(to: &out, indent: nil)
        return out
    }

    /// Indented JSON with sorted keys, for people (the admin API's answers).
    public var prettyText: String {
        var out = ""
        write(to: &out, indent: "")
        return out
    }

    private func write(to out: inout String, indent: String?) {
        switch self {
        case .null: out += "null"
        case .bool(let b): out += b ? "true" : "false"
        case .int(let i): out += String(i)
        case .double(let d): out += d.isFinite ? "\(d)" : "null"
        case .string(let s): Self.quote(s, into: &out)
        case .array(let items):
            if items.isEmpty { out += "[]"; return }
            out += "["
            let inner = indent.map { $0 + "  " }
            for (i, item) in items.enumerated() {
                if i > 0 { out += "," }
                if let inner { out += "\n" + inner }
                item.write(to: &out, indent: inner)
            }
            if let indent { out += "\n" + indent }
            out += "]"
        case .object(let members):
            if members.isEmpty { out += "{}"; return }
            out += "{"
            let inner = indent.map { $0 + "  " }
            for (i, key) in members.keys.sorted().enumerated() {
                if i > 0 { out += "," }
                if let inner { out += "\n" + inner }
                Self.quote(key, into: &out)
                out += indent == nil ? ":" : ": "
                members[key]!.write(to: &out, indent: inner)
            }
            if let indent { out += "\n" + indent }
            out += "}"
        }
    }

    /// A JSON string literal (RFC 8259: quote, backslash and control characters escaped).
    public static func quote(_ s: String, into out: inout String) {
        // Most strings need no escape: one append (scalar by scalar is 10x slower on a
        // document of scripts).
        if !s.utf8.contains(where: { $0 < 0x20 || $0 == UInt8(ascii: "\"") || $0 == UInt8(ascii: "\\") }) {
            out += "\""
            out += s
            out += "\""
            return
        }
        out += "\""
        for scalar in s.unicodeScalars {
            switch scalar {
            case "\"": out += "\\\""
            case "\\": out += "\\\\"
            case "\n": out += "\\n"
            case "\r": out += "\\r"
            case "\t": out += "\\t"
            case _ where scalar.value < 0x20:
                let hex = String(scalar.value, radix: 16)
                out += "\\u" + String(repeating: "0", count: 4 - hex.count) + hex
            default: out.unicodeScalars.append(scalar)
            }
        }
        out += "\""
    }

    public static func quoted(_ s: String) -> String {
        var out = ""
        quote(s, into: &out)
        return out
    }

    public subscript(key: String) -> JSONValue? {
        if case .object(let members) = self { return members[key] }
        return nil
    }

    public var stringValue: String? {
        if case .string(let s) = self { return s }
        return nil
    }

    // MARK: YAML nodes

    /// The YAML node the config decoder reads: YAML is a superset of JSON, so a document the
    /// API receives is checked by the very code that checks the file.
    var node: YAMLNode {
        switch self {
        case .null: return .scalar(.init("", .null))
        case .bool(let b): return .scalar(.init(b ? "true" : "false", .bool))
        case .int(let i): return .scalar(.init(String(i), .int))
        case .double(let d): return .scalar(.init("\(d)", .float))
        case .string(let s): return .scalar(.init(s, .str, .doubleQuoted))
        case .array(let items): return .sequence(.init(items.map(\.node)))
        case .object(let members):
            return .mapping(.init(members.keys.sorted().map { (YAMLNode.scalar(.init($0, .str, .doubleQuoted)), members[$0]!.node) }))
        }
    }

    /// The JSON value of a YAML node as written (before `${VAR}` expansion): plain scalars
    /// keep the type YAML gives them (numbers, booleans, null), the rest are strings.
    init(_ node: YAMLNode) {
        switch node {
        case .scalar(let scalar):
            switch scalar.tag {
            case .null: self = .null
            case .bool: self = scalar.bool.map(JSONValue.bool) ?? .string(scalar.string)
            case .int: self = Int(scalar.string).map(JSONValue.int) ?? .string(scalar.string)
            case .float: self = Double(scalar.string).map(JSONValue.double) ?? .string(scalar.string)
            case .str: self = .string(scalar.string)
            }
        case .sequence(let sequence): self = .array(sequence.map(JSONValue.init))
        case .mapping(let mapping):
            var members: [String: JSONValue] = [:]
            for (key, value) in mapping { members[key.string ?? ""] = JSONValue(value) }
            self = .object(members)
        }
    }
}

extension JSONValue: ExpressibleByStringLiteral, ExpressibleByDictionaryLiteral, ExpressibleByArrayLiteral {
    public init(stringLiteral value: String) { self = .string(value) }
    public init(dictionaryLiteral elements: (String, JSONValue)...) {
        self = .object(Dictionary(elements, uniquingKeysWith: { _, last in last }))
    }
    public init(arrayLiteral elements: JSONValue...) { self = .array(elements) }
}

/// Text that is not JSON.
public struct JSONParseError: Error, Sendable, CustomStringConvertible {
    public var message: String
    public var description: String { message }
}

/// RFC 6901 JSON pointers.
public enum JSONPointer {
    /// One reference token, escaped (`~` → `~0`, `/` → `~1`).
    public static func escape(_ token: String) -> String {
        guard token.utf8.contains(where: { $0 == UInt8(ascii: "~") || $0 == UInt8(ascii: "/") }) else { return token }
        return token.replacing("~", with: "~0").replacing("/", with: "~1")
    }

    public static func join(_ pointer: String, _ token: String) -> String { pointer + "/" + escape(token) }
}
