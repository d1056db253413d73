import Foundation
import Yams

/// A JSON document as a value: what the admin API reads and writes, and what the config store
/// keeps. Control plane only (parsed with Foundation's decoder, never on a request's path).
public enum JSONValue: Sendable, Hashable, Codable {
    case null
    case bool(Bool)
    case int(Int)
    case double(Double)
    case string(String)
    case array([JSONValue])
    case object([String: JSONValue])

    /// Parses JSON text; nil with a reason when it is not one JSON value.
    public static func parse(_ bytes: some Collection<UInt8>) -> Result<JSONValue, JSONParseError> {
        do {
            return .success(try JSONDecoder().decode(JSONValue.self, from: Data(bytes)))
        } catch let DecodingError.dataCorrupted(context) {
            let underlying = (context.underlyingError as? NSError)?.userInfo[NSDebugDescriptionErrorKey] as? String
            return .failure(JSONParseError(message: "invalid JSON: \(underlying ?? context.debugDescription)"))
        } catch {
            return .failure(JSONParseError(message: "invalid JSON: \(error)"))
        }
    }

    public init(from decoder: any Decoder) throws {
        let c = try decoder.singleValueContainer()
        if c.decodeNil() {
            self = .null
        } else if let b = try? c.decode(Bool.self) {
            self = .bool(b)
        } else if let i = try? c.decode(Int.self) {
            self = .int(i)
        } else if let d = try? c.decode(Double.self) {
            self = .double(d)
        } else if let s = try? c.decode(String.self) {
            self = .string(s)
        } else if let a = try? c.decode([JSONValue].self) {
            self = .array(a)
        } else {
            self = .object(try c.decode([String: JSONValue].self))
        }
    }

    public func encode(to encoder: any Encoder) throws {
        var c = encoder.singleValueContainer()
        switch self {
        case .null: try c.encodeNil()
        case .bool(let b): try c.encode(b)
        case .int(let i): try c.encode(i)
        case .double(let d): try c.encode(d)
        case .string(let s): try c.encode(s)
        case .array(let a): try c.encode(a)
        case .object(let o): try c.encode(o)
        }
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
    var node: Node {
        switch self {
        case .null: return Node.scalar(.init("", Tag(.null), .plain))
        case .bool(let b): return Node.scalar(.init(b ? "true" : "false", Tag(.bool), .plain))
        case .int(let i): return Node.scalar(.init(String(i), Tag(.int), .plain))
        case .double(let d): return Node.scalar(.init("\(d)", Tag(.float), .plain))
        case .string(let s): return Node.scalar(.init(s, Tag(.str), .doubleQuoted))
        case .array(let items): return Node.sequence(.init(items.map(\.node)))
        case .object(let members):
            return Node.mapping(.init(members.keys.sorted().map { (Node.scalar(.init($0, Tag(.str), .doubleQuoted)), members[$0]!.node) }))
        }
    }

    /// The JSON value of a YAML node as written (before `${VAR}` expansion): plain scalars
    /// keep the type YAML gives them (numbers, booleans, null), the rest are strings.
    init(_ node: Node) {
        switch node {
        case .scalar(let scalar):
            guard scalar.style == .plain else {
                self = .string(scalar.string)
                return
            }
            switch node.tag {
            case Tag(.null): self = .null
            case Tag(.bool): self = node.bool.map(JSONValue.bool) ?? .string(scalar.string)
            case Tag(.int): self = Int(scalar.string).map(JSONValue.int) ?? .string(scalar.string)
            case Tag(.float): self = Double(scalar.string).map(JSONValue.double) ?? .string(scalar.string)
            default: self = .string(scalar.string)
            }
        case .sequence(let sequence): self = .array(sequence.map(JSONValue.init))
        case .mapping(let mapping):
            var members: [String: JSONValue] = [:]
            for (key, value) in mapping { members[key.string ?? ""] = JSONValue(value) }
            self = .object(members)
        case .alias: self = .null
        }
    }
}

extension JSONValue: ExpressibleByStringLiteral {
    public init(stringLiteral value: String) { self = .string(value) }
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
        token.replacingOccurrences(of: "~", with: "~0").replacingOccurrences(of: "/", with: "~1")
    }

    public static func join(_ pointer: String, _ token: String) -> String { pointer + "/" + escape(token) }
}
