internal import CYAML

/// YAML text that does not compose into one document.
public struct YAMLError: Error, Sendable, Equatable, CustomStringConvertible {
    public enum Kind: Sendable, Equatable {
        /// The scanner or parser refused the text (libyaml's problem).
        case syntax
        /// The text parses but is not a document we take: several documents, an unknown alias,
        /// too deep, too large once aliases are expanded.
        case document
    }

    public var kind: Kind
    /// Lines from 1; 0 when no place applies.
    public var line: Int
    public var message: String
    public var description: String { line > 0 ? "line \(line): \(message)" : message }
}

/// Composes YAML text into a `YAMLNode` tree on libyaml's event parser (Debian's `libyaml`).
///
/// Why not Yams: it needs the whole of Foundation (regular expressions, date formatters), and
/// with it ICU's 34 MB of data in the binary. libyaml is the parser Yams wraps; this file is
/// only the composition (events to a tree, anchors, limits).
public enum YAMLComposer {
    /// Limits that keep a hostile document from costing more than a large honest one.
    public struct Limits: Sendable {
        /// Nesting of mappings and sequences (the readers that walk the tree recurse).
        public var depth = 256
        /// Nodes, counting an alias as the nodes it stands for ("billion laughs").
        public var nodes = 200_000
        public init() {}
    }

    /// The single document in `text`, or nil when the text holds none (empty, or comments only).
    public static func compose(_ text: String, limits: Limits = Limits()) throws(YAMLError) -> YAMLNode? {
        var parser = yaml_parser_t()
        guard yaml_parser_initialize(&parser) == 1 else {
            throw YAMLError(kind: .document, line: 0, message: "out of memory")
        }
        defer { yaml_parser_delete(&parser) }
        var bytes = Array(text.utf8)
        return try bytes.withUnsafeMutableBufferPointer { (buffer) throws(YAMLError) -> YAMLNode? in
            yaml_parser_set_input_string(&parser, buffer.baseAddress, buffer.count)
            var builder = Builder(limits: limits)
            while true {
                var event = yaml_event_t()
                guard yaml_parser_parse(&parser, &event) == 1 else { throw syntaxError(parser) }
                defer { yaml_event_delete(&event) }
                if event.type == YAML_STREAM_END_EVENT { break }
                try builder.take(&event)
            }
            return builder.document
        }
    }

    private static func syntaxError(_ parser: yaml_parser_t) -> YAMLError {
        let problem = parser.problem.map { String(cString: $0) } ?? "invalid YAML"
        let context = parser.context.map { String(cString: $0) }
        let message = context.map { "\(problem) \($0)" } ?? problem
        return YAMLError(kind: .syntax, line: Int(parser.problem_mark.line) + 1, message: message)
    }

    /// The tree under construction: an explicit stack, so nesting costs heap, not stack.
    private struct Builder {
        enum Frame {
            case sequence(items: [YAMLNode], mark: YAMLNode.Mark, anchor: String?, startCount: Int)
            case mapping(pairs: [(YAMLNode, YAMLNode)], key: YAMLNode?, mark: YAMLNode.Mark, anchor: String?, startCount: Int)
        }

        let limits: Limits
        var stack: [Frame] = []
        var anchors: [String: (node: YAMLNode, weight: Int)] = [:]
        var count = 0
        var documents = 0
        var document: YAMLNode?

        init(limits: Limits) { self.limits = limits }

        mutating func take(_ event: inout yaml_event_t) throws(YAMLError) {
            let mark = YAMLNode.Mark(line: Int(event.start_mark.line) + 1, column: Int(event.start_mark.column) + 1)
            switch event.type {
            case YAML_DOCUMENT_START_EVENT:
                documents += 1
                if documents > 1 {
                    throw YAMLError(kind: .document, line: mark.line, message: "expected a single document, found another")
                }
            case YAML_SCALAR_EVENT:
                let data = event.data.scalar
                let text = data.value.map { String(decoding: UnsafeBufferPointer(start: $0, count: data.length), as: UTF8.self) } ?? ""
                let scalar = YAMLNode.Scalar(text, Self.tag(data.tag), Self.style(data.style), mark: mark)
                try counted(1, at: mark)
                let node = YAMLNode.scalar(scalar)
                if let anchor = Self.string(data.anchor) { anchors[anchor] = (node, 1) }
                try add(node)
            case YAML_ALIAS_EVENT:
                let name = Self.string(event.data.alias.anchor) ?? ""
                guard let (node, weight) = anchors[name] else {
                    throw YAMLError(kind: .document, line: mark.line, message: "unknown alias \"\(name)\"")
                }
                try counted(weight, at: mark)
                try add(node)
            case YAML_SEQUENCE_START_EVENT:
                try counted(1, at: mark)
                try push(.sequence(items: [], mark: mark, anchor: Self.string(event.data.sequence_start.anchor), startCount: count), at: mark)
            case YAML_MAPPING_START_EVENT:
                try counted(1, at: mark)
                try push(.mapping(pairs: [], key: nil, mark: mark, anchor: Self.string(event.data.mapping_start.anchor), startCount: count), at: mark)
            case YAML_SEQUENCE_END_EVENT, YAML_MAPPING_END_EVENT:
                guard let frame = stack.popLast() else { return }
                switch frame {
                case .sequence(let items, let start, let anchor, let startCount):
                    try close(.sequence(.init(items, mark: start)), anchor: anchor, weight: count - startCount + 1)
                case .mapping(let pairs, _, let start, let anchor, let startCount):
                    try close(.mapping(.init(pairs, mark: start)), anchor: anchor, weight: count - startCount + 1)
                }
            default:
                break
            }
        }

        private mutating func counted(_ n: Int, at mark: YAMLNode.Mark) throws(YAMLError) {
            count += n
            if count > limits.nodes {
                throw YAMLError(kind: .document, line: mark.line, message: "more than \(limits.nodes) nodes once aliases are expanded")
            }
        }

        private mutating func push(_ frame: Frame, at mark: YAMLNode.Mark) throws(YAMLError) {
            guard stack.count < limits.depth else {
                throw YAMLError(kind: .document, line: mark.line, message: "nested deeper than \(limits.depth) levels")
            }
            stack.append(frame)
        }

        private mutating func close(_ node: YAMLNode, anchor: String?, weight: Int) throws(YAMLError) {
            if let anchor { anchors[anchor] = (node, weight) }
            try add(node)
        }

        private mutating func add(_ node: YAMLNode) throws(YAMLError) {
            guard let top = stack.popLast() else {
                document = node
                return
            }
            switch top {
            case .sequence(var items, let mark, let anchor, let startCount):
                items.append(node)
                stack.append(.sequence(items: items, mark: mark, anchor: anchor, startCount: startCount))
            case .mapping(var pairs, let key, let mark, let anchor, let startCount):
                if let key {
                    pairs.append((key, node))
                    stack.append(.mapping(pairs: pairs, key: nil, mark: mark, anchor: anchor, startCount: startCount))
                } else {
                    stack.append(.mapping(pairs: pairs, key: node, mark: mark, anchor: anchor, startCount: startCount))
                }
            }
        }

        static func string(_ pointer: UnsafeMutablePointer<yaml_char_t>?) -> String? {
            pointer.map { String(cString: $0) }
        }

        /// The core schema's explicit tags (`!!str` and so on); other tags leave the scalar to
        /// be resolved from its text.
        static func tag(_ pointer: UnsafeMutablePointer<yaml_char_t>?) -> YAMLNode.Tag? {
            switch string(pointer) {
            case "tag:yaml.org,2002:str": return .str
            case "tag:yaml.org,2002:int": return .int
            case "tag:yaml.org,2002:float": return .float
            case "tag:yaml.org,2002:bool": return .bool
            case "tag:yaml.org,2002:null": return .null
            default: return nil
            }
        }

        static func style(_ style: yaml_scalar_style_t) -> YAMLNode.Style {
            switch style {
            case YAML_SINGLE_QUOTED_SCALAR_STYLE: return .singleQuoted
            case YAML_DOUBLE_QUOTED_SCALAR_STYLE: return .doubleQuoted
            case YAML_LITERAL_SCALAR_STYLE: return .literal
            case YAML_FOLDED_SCALAR_STYLE: return .folded
            default: return .plain
            }
        }
    }
}
