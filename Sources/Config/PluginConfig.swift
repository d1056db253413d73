import YAML

/// A configuration value with where it was written: a plugin's `config`, kept as written
/// until the plugin's schema (known only once its Lua module loads) checks it.
public struct LocatedValue: Sendable, Hashable {
    public indirect enum Kind: Sendable, Hashable {
        case null
        case bool(Bool)
        case int(Int)
        case double(Double)
        case string(String)
        case array([LocatedValue])
        /// Members in the order written.
        case object([Member])
    }

    public struct Member: Sendable, Hashable {
        public var key: String
        public var value: LocatedValue

        public init(key: String, value: LocatedValue) {
            self.key = key
            self.value = value
        }
    }

    public var kind: Kind
    /// Where it is: file, line and path, as a diagnostic would say it.
    public var file: String
    public var line: Int
    /// `routes[0].plugins[1].config.rate`
    public var path: String
    /// `/routes/0/plugins/1/config/rate`
    public var pointer: String

    public init(_ kind: Kind, file: String = "", line: Int = 0, path: String = "", pointer: String = "") {
        self.kind = kind
        self.file = file
        self.line = line
        self.path = path
        self.pointer = pointer
    }

    /// A problem with this value, located where it was written.
    public func problem(_ message: String) -> ConfigDiagnostic {
        ConfigDiagnostic(file: file, line: line, path: path, message: message, pointer: pointer)
    }

    /// The value without its places.
    public var json: JSONValue {
        switch kind {
        case .null: return .null
        case .bool(let b): return .bool(b)
        case .int(let i): return .int(i)
        case .double(let d): return .double(d)
        case .string(let s): return .string(s)
        case .array(let items): return .array(items.map(\.json))
        case .object(let members): return .object(Dictionary(members.map { ($0.key, $0.value.json) }, uniquingKeysWith: { a, _ in a }))
        }
    }

    /// A value given as JSON (the admin API's documents come through YAML nodes instead;
    /// this serves tests and tools), placed under `path`.
    public init(json: JSONValue, file: String = "", line: Int = 0, path: String = "", pointer: String = "") {
        let kind: Kind
        switch json {
        case .null: kind = .null
        case .bool(let b): kind = .bool(b)
        case .int(let i): kind = .int(i)
        case .double(let d): kind = .double(d)
        case .string(let s): kind = .string(s)
        case .array(let items):
            kind = .array(items.enumerated().map { i, item in
                LocatedValue(json: item, file: file, line: line, path: "\(path)[\(i)]", pointer: pointer + "/\(i)")
            })
        case .object(let members):
            kind = .object(members.sorted { $0.key < $1.key }.map { key, value in
                Member(key: key, value: LocatedValue(json: value, file: file, line: line, path: path.isEmpty ? key : "\(path).\(key)", pointer: JSONPointer.join(pointer, key)))
            })
        }
        self.init(kind, file: file, line: line, path: path, pointer: pointer)
    }

    /// Text for messages: `"ten"`, `12`, `true`, `a list`, `a mapping`, `null`.
    public var shown: String {
        switch kind {
        case .null: return "null"
        case .bool(let b): return b ? "true" : "false"
        case .int(let i): return String(i)
        case .double(let d): return "\(d)"
        case .string(let s): return JSONValue.quoted(s.count > 60 ? String(s.prefix(60)) + "…" : s)
        case .array: return "a list"
        case .object: return "a mapping"
        }
    }
}

/// One plugin in a chain, as configured: `{name: cors, config: {...}}`.
public struct PluginUse: Sendable, Hashable {
    public var name: String
    /// Its `config` as written (an empty mapping when not given), checked against the
    /// plugin's schema when the generation is built.
    public var config: LocatedValue
    /// Where the entry is (`routes[0].plugins[1]`), for messages about the entry itself.
    public var place: LocatedValue

    public init(name: String, config: LocatedValue, place: LocatedValue) {
        self.name = name
        self.config = config
        self.place = place
    }
}

/// `plugins:` at the top of the file.
public struct PluginsConfig: Sendable, Equatable {
    /// Plugins every route runs, before its own.
    public var global: [PluginUse] = []
    /// Folders of user plugins (`NAME.lua`), resolved against the config file's folder.
    public var dirs: [String] = []

    public init(global: [PluginUse] = [], dirs: [String] = []) {
        self.global = global
        self.dirs = dirs
    }
}

/// `kv:` — where scripts' `kv` keeps its keys.
public struct KVConfig: Sendable, Equatable {
    /// `local` (the gateway's memory) or a server under `redis:`. Default: the only Redis
    /// server when exactly one is configured (sessions then survive restarts and are shared
    /// by gateways), else `local`.
    public var store = "local"
    /// Prepended to every key in Redis, before the plugin's namespace.
    public var prefix = "moongate:kv:"

    public init() {}
}

extension ConfigDecoder {
    func decodeKV(_ node: YAMLNode?, redis: [RedisServer]) -> KVConfig {
        let r = reader
        var config = KVConfig()
        if redis.count == 1 { config.store = redis[0].name }
        guard let node, let map = r.mapping(node, "kv", allowed: ["store", "prefix"]) else { return config }
        if let n = map["store"]?.value, let v = r.string(n, "kv.store") {
            if v == "local" || redis.contains(where: { $0.name == v }) {
                config.store = v
            } else {
                r.fail(n, "kv.store", "unknown store \"\(v)\" (expected local or a server under redis)")
            }
        }
        if let n = map["prefix"]?.value, let v = r.string(n, "kv.prefix") {
            if v.utf8.count <= 64 { config.prefix = v } else { r.fail(n, "kv.prefix", "at most 64 bytes") }
        }
        return config
    }

    /// `plugins:` at the top: a list (the global chain), or `{dirs: [...], global: [...]}`.
    func decodePluginsSection(_ node: YAMLNode) -> PluginsConfig {
        let r = reader
        var out = PluginsConfig()
        if case .sequence = node {
            out.global = decodePluginList(node, "plugins")
            return out
        }
        guard let map = r.mapping(node, "plugins", allowed: ["dirs", "global"]) else { return out }
        if let n = map["global"]?.value {
            let path = r.join("plugins", "global")
            // In a config document the global chain is the `plugins` list itself.
            r.point(path, at: "plugins")
            out.global = decodePluginList(n, path)
        }
        if let n = map["dirs"]?.value, let list = r.sequence(n, r.join("plugins", "dirs")) {
            for (i, item) in list.enumerated() {
                if let dir = r.string(item, r.join(r.join("plugins", "dirs"), i)), !dir.isEmpty { out.dirs.append(dir) }
            }
        }
        return out
    }

    /// A list of `{name, config}` entries; a name twice in one list is refused.
    func decodePluginList(_ node: YAMLNode, _ path: String) -> [PluginUse] {
        let r = reader
        guard let items = r.sequence(node, path) else { return [] }
        var out: [PluginUse] = []
        for (i, item) in items.enumerated() {
            let itemPath = r.join(path, i)
            guard let map = r.mapping(item, itemPath, allowed: ["name", "config"]) else { continue }
            guard let nameNode = map["name"]?.value else {
                r.fail(item, r.join(itemPath, "name"), "required: the plugin's name (moongate plugins lists them)")
                continue
            }
            guard let name = r.string(nameNode, r.join(itemPath, "name")) else { continue }
            guard Self.validPluginName(name) else {
                r.fail(nameNode, r.join(itemPath, "name"), "a plugin name is made of lower-case letters, digits, - and _ (got \(JSONValue.quoted(name)))")
                continue
            }
            if out.contains(where: { $0.name == name }) {
                r.fail(nameNode, r.join(itemPath, "name"), "plugin \"\(name)\" is already in this list")
                continue
            }
            let place = LocatedValue(.null, file: r.file, line: item.mark?.line ?? 0, path: itemPath, pointer: r.pointer(itemPath))
            let configPath = r.join(itemPath, "config")
            let config: LocatedValue
            if let c = map["config"]?.value {
                guard case .mapping = c else {
                    r.fail(c, configPath, "expected a mapping of the plugin's fields")
                    continue
                }
                guard let value = located(c, configPath) else { continue }
                config = value
            } else {
                config = LocatedValue(.object([]), file: r.file, line: item.mark?.line ?? 0, path: configPath, pointer: r.pointer(configPath))
            }
            out.append(PluginUse(name: name, config: config, place: place))
        }
        return out
    }

    static func validPluginName(_ name: String) -> Bool {
        guard let first = name.utf8.first, (UInt8(ascii: "a")...UInt8(ascii: "z")).contains(first), name.utf8.count <= 64 else { return false }
        return name.utf8.allSatisfy { c in
            (UInt8(ascii: "a")...UInt8(ascii: "z")).contains(c) || (UInt8(ascii: "0")...UInt8(ascii: "9")).contains(c) || c == UInt8(ascii: "-") || c == UInt8(ascii: "_")
        }
    }

    /// The YAML under `node` as a located value. Scalars get YAML 1.2's core types when plain
    /// (after `${VAR}` expansion); quoted scalars are strings.
    private func located(_ node: YAMLNode, _ path: String, depth: Int = 0) -> LocatedValue? {
        let r = reader
        let line = node.mark?.line ?? 0
        func make(_ kind: LocatedValue.Kind) -> LocatedValue {
            LocatedValue(kind, file: r.file, line: line, path: path, pointer: r.pointer(path))
        }
        guard depth < 32 else {
            r.fail(node, path, "nested deeper than 32 levels")
            return nil
        }
        switch node {
        case .scalar(let scalar):
            guard let text = r.string(node, path) else { return nil }
            guard scalar.style == .plain else { return make(.string(text)) }
            switch text {
            case "", "~", "null", "Null", "NULL": return make(.null)
            case "true", "True", "TRUE": return make(.bool(true))
            case "false", "False", "FALSE": return make(.bool(false))
            default: break
            }
            if let i = Int(text) { return make(.int(i)) }
            if let first = text.first, first.isNumber || first == "-" || first == "+" || first == ".", let d = Double(text), d.isFinite {
                return make(.double(d))
            }
            return make(.string(text))
        case .sequence(let sequence):
            var items: [LocatedValue] = []
            for (i, item) in sequence.enumerated() {
                guard let value = located(item, r.join(path, i), depth: depth + 1) else { return nil }
                items.append(value)
            }
            return make(.array(items))
        case .mapping(let mapping):
            var members: [LocatedValue.Member] = []
            var firstLines: [String: Int] = [:]
            for (key, value) in mapping {
                guard case .scalar(let k) = key else {
                    r.fail(key, path, "keys must be plain strings")
                    return nil
                }
                if let firstLine = firstLines[k.string] {
                    r.fail(key, r.join(path, k.string), "duplicate key \"\(k.string)\" (first at line \(firstLine))")
                    return nil
                }
                firstLines[k.string] = key.mark?.line ?? 0
                guard let v = located(value, r.join(path, k.string), depth: depth + 1) else { return nil }
                members.append(LocatedValue.Member(key: k.string, value: v))
            }
            return make(.object(members))
        }
    }
}
