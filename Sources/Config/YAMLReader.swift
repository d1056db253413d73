import YAML

/// Walks a composed YAML document, expanding environment variables in scalars and collecting
/// every problem with its line and document path instead of stopping at the first.
final class YAMLReader {
    let file: String
    let environment: [String: String]
    private(set) var diagnostics: [ConfigDiagnostic] = []
    /// The scripts the document names (policies, routers), where it names them.
    var scriptReferences: [ScriptReference] = []

    init(file: String, environment: [String: String]) {
        self.file = file
        self.environment = environment
    }

    /// How each path `join` built was made (its parent and last token), for its JSON pointer:
    /// names may hold dots, which the dotted path cannot tell from nesting. Pointers are
    /// spelled only for problems.
    private var parents: [String: (parent: String, token: String)] = [:]

    func fail(_ node: YAMLNode?, _ path: String, _ message: String) {
        diagnostics.append(ConfigDiagnostic(file: file, line: node?.mark?.line ?? 0, path: path, message: message, pointer: pointer(path)))
    }

    func pointer(_ path: String) -> String {
        guard let (parent, token) = parents[path] else { return ConfigDiagnostic.pointer(path: path) }
        return JSONPointer.join(pointer(parent), token)
    }

    /// The pairs of a mapping, reporting keys outside `allowed` as errors.
    func mapping(_ node: YAMLNode, _ path: String, allowed: Set<String>) -> [String: (key: YAMLNode, value: YAMLNode)]? {
        guard case .mapping(let mapping) = node else {
            fail(node, path, "expected a mapping")
            return nil
        }
        var out: [String: (key: YAMLNode, value: YAMLNode)] = [:]
        var firstLines: [String: Int] = [:]
        for (key, value) in mapping {
            guard case .scalar(let scalar) = key else {
                fail(key, path, "keys must be plain strings")
                continue
            }
            let name = scalar.string
            if let firstLine = firstLines[name] {
                fail(key, join(path, name), "duplicate key \"\(name)\" (first at line \(firstLine))")
                continue
            }
            firstLines[name] = key.mark?.line ?? 0
            if !allowed.contains(name) {
                let known = allowed.sorted().joined(separator: ", ")
                fail(key, join(path, name), "unknown key \"\(name)\" (expected one of: \(known))")
            } else {
                out[name] = (key, value)
            }
        }
        return out
    }

    func sequence(_ node: YAMLNode, _ path: String) -> [YAMLNode]? {
        guard case .sequence(let sequence) = node else {
            fail(node, path, "expected a list")
            return nil
        }
        return Array(sequence)
    }

    func string(_ node: YAMLNode, _ path: String) -> String? {
        guard case .scalar(let scalar) = node else {
            fail(node, path, "expected a string")
            return nil
        }
        do {
            return try EnvironmentInterpolation.expand(scalar.string, environment: environment)
        } catch {
            switch error {
            case .unset(let name):
                fail(node, path, "environment variable \(name) is not set (use ${\(name):-default} for a default)")
            case .unterminated: fail(node, path, "unterminated ${ in \"\(scalar.string)\"")
            case .badName(let name): fail(node, path, "invalid variable name \"\(name)\" in ${...}")
            }
            return nil
        }
    }

    func int(_ node: YAMLNode, _ path: String, range: ClosedRange<Int>) -> Int? {
        guard let text = string(node, path) else { return nil }
        guard let value = Int(text.trimmingSpaces()), range.contains(value) else {
            fail(node, path, "expected an integer in \(range.lowerBound)...\(range.upperBound), got \"\(text)\"")
            return nil
        }
        return value
    }

    func bool(_ node: YAMLNode, _ path: String) -> Bool? {
        guard let text = string(node, path) else { return nil }
        switch text.lowercased() {
        case "true", "yes", "on": return true
        case "false", "no", "off": return false
        default:
            fail(node, path, "expected true or false, got \"\(text)\"")
            return nil
        }
    }

    func duration(_ node: YAMLNode, _ path: String) -> Duration? {
        guard let text = string(node, path) else { return nil }
        guard let value = Units.duration(text) else {
            fail(node, path, "expected a duration such as 500ms, 2s or 1m, got \"\(text)\"")
            return nil
        }
        return value
    }

    func size(_ node: YAMLNode, _ path: String) -> Int? {
        guard let text = string(node, path) else { return nil }
        guard let value = Units.size(text) else {
            fail(node, path, "expected a size such as 8192, 16k or 10MB, got \"\(text)\"")
            return nil
        }
        return value
    }

    func address(_ node: YAMLNode, _ path: String) -> SocketAddressSpec? {
        guard let text = string(node, path) else { return nil }
        guard let value = SocketAddressSpec(parsing: text) else {
            fail(node, path, "expected host:port, got \"\(text)\"")
            return nil
        }
        return value
    }

    /// Makes `path`'s JSON pointer that of the top-level `key` (a value whose place in a
    /// config document differs from its place in the file).
    func point(_ path: String, at key: String) {
        parents[path] = ("", key)
    }

    func join(_ path: String, _ key: String) -> String {
        let joined = path.isEmpty ? key : "\(path).\(key)"
        parents[joined] = (path, key)
        return joined
    }

    func join(_ path: String, _ index: Int) -> String {
        let joined = "\(path)[\(index)]"
        parents[joined] = (path, String(index))
        return joined
    }
}
