/// A composed YAML document: scalars, mappings and sequences with the line each began on.
///
/// Mappings keep every pair in document order, duplicates included: the config reader reports
/// a duplicate key with both lines and goes on, where a dictionary would have kept one silently.
public enum YAMLNode: Sendable, Equatable {
    case scalar(Scalar)
    case mapping(Mapping)
    case sequence(Sequence)

    /// Where a node begins (lines from 1).
    public struct Mark: Sendable, Equatable {
        public var line: Int
        public var column: Int
        public init(line: Int, column: Int) {
            self.line = line
            self.column = column
        }
    }

    /// The types YAML gives scalars.
    public enum Tag: Sendable, Equatable {
        case null, bool, int, float, str
    }

    public enum Style: Sendable, Equatable {
        case plain, singleQuoted, doubleQuoted, literal, folded
    }

    public struct Scalar: Sendable, Equatable {
        public var string: String
        public var style: Style
        /// An explicit tag (`!!str 12`) or the one a value built in code was given; nil for a
        /// scalar as written, whose type `tag` resolves from its text.
        public var explicitTag: Tag?
        public var mark: Mark?

        public init(_ string: String, _ tag: Tag? = nil, _ style: Style = .plain, mark: Mark? = nil) {
            self.string = string
            self.style = style
            self.explicitTag = tag
            self.mark = mark
        }

        /// The scalar's type: its explicit tag, else a quoted scalar is a string and a plain one
        /// is resolved as YAML 1.1 does (the dialect of libyaml and of the files people write:
        /// `yes`/`no` are booleans, a float has a dot).
        public var tag: Tag {
            if let explicitTag { return explicitTag }
            guard style == .plain else { return .str }
            return Self.resolve(string)
        }

        static func resolve(_ text: String) -> Tag {
            switch text {
            case "", "~", "null", "Null", "NULL": return .null
            case "true", "True", "TRUE", "false", "False", "FALSE", "yes", "Yes", "YES", "no", "No", "NO", "on", "On", "ON", "off", "Off", "OFF":
                return .bool
            default: break
            }
            if Int(text) != nil { return .int }
            if text.utf8.contains(UInt8(ascii: ".")), let first = text.utf8.first,
                first == UInt8(ascii: "-") || first == UInt8(ascii: "+") || first == UInt8(ascii: ".") || (first >= UInt8(ascii: "0") && first <= UInt8(ascii: "9")),
                Double(text) != nil
            {
                return .float
            }
            return .str
        }

        /// The boolean a scalar tagged `bool` spells.
        public var bool: Bool? {
            guard tag == .bool else { return nil }
            switch string {
            case "true", "True", "TRUE", "yes", "Yes", "YES", "on", "On", "ON": return true
            default: return false
            }
        }
    }

    public struct Mapping: Sendable, Equatable, RandomAccessCollection {
        public var pairs: [Pair]
        public var mark: Mark?

        public struct Pair: Sendable, Equatable {
            public var key: YAMLNode
            public var value: YAMLNode
        }

        public init(_ pairs: [(YAMLNode, YAMLNode)], mark: Mark? = nil) {
            self.pairs = pairs.map { Pair(key: $0.0, value: $0.1) }
            self.mark = mark
        }

        public var startIndex: Int { pairs.startIndex }
        public var endIndex: Int { pairs.endIndex }
        public subscript(i: Int) -> (key: YAMLNode, value: YAMLNode) { (pairs[i].key, pairs[i].value) }

        /// The value of the last pair whose key is the scalar `key`.
        public subscript(key: String) -> YAMLNode? {
            pairs.last { $0.key.string == key }?.value
        }
    }

    public struct Sequence: Sendable, Equatable, RandomAccessCollection {
        public var items: [YAMLNode]
        public var mark: Mark?

        public init(_ items: [YAMLNode], mark: Mark? = nil) {
            self.items = items
            self.mark = mark
        }

        public var startIndex: Int { items.startIndex }
        public var endIndex: Int { items.endIndex }
        public subscript(i: Int) -> YAMLNode { items[i] }
    }

    public var mark: Mark? {
        switch self {
        case .scalar(let s): return s.mark
        case .mapping(let m): return m.mark
        case .sequence(let s): return s.mark
        }
    }

    /// The text of a scalar.
    public var string: String? {
        if case .scalar(let s) = self { return s.string }
        return nil
    }
}
