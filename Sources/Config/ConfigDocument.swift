import YAML

/// The dynamic part of a configuration as one JSON document: routes, upstreams, keysets, API
/// key sets, the global plugin chain and the Lua scripts' sources. The admin API reads and replaces it, the config
/// store keeps its versions; the YAML file keeps the rest (listeners, limits, timeouts, ...).
///
/// ```json
/// {"routes": [{"name": "hello", "match": {"path": "/hello"}, "upstream": "echo"}],
///  "upstreams": {"echo": {"targets": [{"address": "127.0.0.1:9000"}]}},
///  "keysets": {}, "apikeys": {}, "plugins": [{"name": "correlation-id"}],
///  "scripts": {"hello.lua": "return function() end"}}
/// ```
/// The same keys mean what they mean in the YAML file and are checked by the same code.
/// `plugins` is the global chain (the file's `plugins:` list, or `plugins.global` when the file
/// also names `plugins.dirs`, which stay the file's: they are paths on this machine).
public struct ConfigDocument: Sendable, Equatable {
    /// One kind of thing the API addresses by name (`/v1/routes/{name}`, ...).
    public enum Section: String, Sendable, CaseIterable {
        case routes, upstreams, keysets, apikeys, plugins, scripts

        /// A list in document order (routes by match priority; plugins as written), whose
        /// entities are named by their `name` member; the other sections map names to values.
        var isList: Bool { self == .routes || self == .plugins }
    }

    /// The config sections in YAML form (`routes` and `plugins` lists, the others mappings by name).
    public private(set) var sections: [Section: JSONValue]
    /// Lua sources by path relative to the scripts directory (`lib/util.lua`).
    public private(set) var scripts: [String: String]

    /// The sections the YAML file holds (all but `scripts`, which are files).
    public static let configSections: [Section] = [.routes, .upstreams, .keysets, .apikeys, .plugins]

    public init(sections: [Section: JSONValue] = [:], scripts: [String: String] = [:]) {
        self.sections = Self.filled(sections.filter { $0.key != .scripts })
        self.scripts = scripts
    }

    /// Every config section present (an absent one is an empty one): a document reads the same
    /// whether a section was left out or written empty.
    private static func filled(_ sections: [Section: JSONValue]) -> [Section: JSONValue] {
        var out = sections
        for section in configSections where out[section] == nil || out[section] == .null {
            out[section] = section.isList ? .array([]) : .object([:])
        }
        return out
    }

    /// Reads a document sent to the API or kept in the store, checking its shape only (what the
    /// sections say is checked by `ConfigLoader.load(path:document:)`).
    public init(json: JSONValue) throws(ConfigError) {
        guard case .object(let members) = json else {
            throw ConfigError([ConfigDiagnostic(pointer: "", message: "expected an object with routes, upstreams, keysets, apikeys, plugins and scripts")])
        }
        var sections: [Section: JSONValue] = [:]
        var scripts: [String: String] = [:]
        var problems: [ConfigDiagnostic] = []
        for (key, value) in members {
            guard let section = Section(rawValue: key) else {
                let known = Section.allCases.map(\.rawValue).joined(separator: ", ")
                problems.append(ConfigDiagnostic(pointer: JSONPointer.join("", key), message: "unknown key \"\(key)\" (expected one of: \(known))"))
                continue
            }
            if section == .scripts {
                guard case .object(let files) = value else {
                    problems.append(ConfigDiagnostic(pointer: "/scripts", message: "expected an object of script paths to Lua sources"))
                    continue
                }
                for (path, source) in files {
                    guard case .string(let text) = source else {
                        problems.append(ConfigDiagnostic(pointer: JSONPointer.join("/scripts", path), message: "expected the script's Lua source as a string"))
                        continue
                    }
                    scripts[path] = text
                }
            } else {
                sections[section] = value
            }
        }
        if !problems.isEmpty { throw ConfigError(problems.sorted { $0.pointer < $1.pointer }) }
        self.sections = Self.filled(sections)
        self.scripts = scripts
    }

    /// The document as JSON (every section present, empty when unset).
    public var json: JSONValue {
        var members: [String: JSONValue] = [:]
        for section in Self.configSections { members[section.rawValue] = sections[section] }
        members[Section.scripts.rawValue] = .object(scripts.mapValues(JSONValue.string))
        return .object(members)
    }

    /// A short tag for this exact content (FNV-1a over the canonical text): the `ETag` of a
    /// configuration that has no store version.
    public var digest: String {
        var hash: UInt64 = 0xcbf2_9ce4_8422_2325
        for byte in json.canonicalText.utf8 {
            hash ^= UInt64(byte)
            hash &*= 0x100_0000_01b3
        }
        let hex = String(hash, radix: 16)
        return String(repeating: "0", count: 16 - hex.count) + hex
    }

    // MARK: Entities

    /// Names of the entities of `section`, in document order for lists, sorted for the rest.
    public func names(_ section: Section) -> [String] {
        switch section {
        case .scripts: return scripts.keys.sorted()
        case .routes, .plugins:
            guard case .array(let items) = sections[section] else { return [] }
            return items.enumerated().map { Self.itemName(section, $1, index: $0) }
        case .upstreams, .keysets, .apikeys:
            guard case .object(let members) = sections[section] else { return [] }
            return members.keys.sorted()
        }
    }

    /// One entity by name: a route, an upstream, a keyset, an API key set, a global plugin or
    /// a script (a string).
    public func entity(_ section: Section, _ name: String) -> JSONValue? {
        switch section {
        case .scripts: return scripts[name].map(JSONValue.string)
        case .routes, .plugins:
            guard case .array(let items) = sections[section] else { return nil }
            return items.enumerated().first { Self.itemName(section, $1, index: $0) == name }?.element
        case .upstreams, .keysets, .apikeys:
            return sections[section]?[name]
        }
    }

    /// Adds or replaces one entity. A route or a plugin keeps its place in its list (a
    /// route's place is its match priority); a new one goes last. Its `name` is the one in
    /// the path.
    public mutating func put(_ section: Section, _ name: String, _ value: JSONValue) {
        switch section {
        case .scripts:
            scripts[name] = value.stringValue ?? ""
        case .routes, .plugins:
            var item = value
            if case .object(var members) = value {
                members["name"] = .string(name)
                item = .object(members)
            }
            guard case .array(var items) = sections[section] else {
                sections[section] = .array([item])
                return
            }
            if let i = items.enumerated().first(where: { Self.itemName(section, $1, index: $0) == name })?.offset {
                items[i] = item
            } else {
                items.append(item)
            }
            sections[section] = .array(items)
        case .upstreams, .keysets, .apikeys:
            var members: [String: JSONValue] = [:]
            if case .object(let existing) = sections[section] { members = existing }
            members[name] = value
            sections[section] = .object(members)
        }
    }

    /// Removes one entity; false when there was none.
    public mutating func delete(_ section: Section, _ name: String) -> Bool {
        switch section {
        case .scripts:
            return scripts.removeValue(forKey: name) != nil
        case .routes, .plugins:
            guard case .array(var items) = sections[section],
                let i = items.enumerated().first(where: { Self.itemName(section, $1, index: $0) == name })?.offset
            else { return false }
            items.remove(at: i)
            sections[section] = .array(items)
            return true
        case .upstreams, .keysets, .apikeys:
            guard case .object(var members) = sections[section], members.removeValue(forKey: name) != nil else { return false }
            sections[section] = .object(members)
            return true
        }
    }

    /// The name the config gives a list's item: its `name`, or `route<i>` (`plugin<i>`)
    /// without one.
    static func itemName(_ section: Section, _ item: JSONValue, index: Int) -> String {
        item["name"]?.stringValue ?? (section == .plugins ? "plugin\(index)" : "route\(index)")
    }

    // MARK: Differences

    /// One entity added, removed or changed between two documents.
    public struct Change: Sendable, Equatable, CustomStringConvertible {
        public enum Kind: String, Sendable { case added, removed, changed }
        public var section: Section
        public var name: String
        public var kind: Kind
        public var description: String { "\(kind.rawValue) \(section.rawValue)/\(name)" }
        public var json: JSONValue { .object(["section": .string(section.rawValue), "name": .string(name), "change": .string(kind.rawValue)]) }
    }

    /// What `self` changes relative to `old`, section by section (route order counts: a route
    /// that moved before or after another is changed).
    public func changes(from old: ConfigDocument) -> [Change] {
        var out: [Change] = []
        for section in Section.allCases {
            let before = old.entities(section), after = entities(section)
            let beforeNames = Dictionary(before.map { ($0.name, $0.value) }, uniquingKeysWith: { a, _ in a })
            let afterNames = Dictionary(after.map { ($0.name, $0.value) }, uniquingKeysWith: { a, _ in a })
            for (name, _) in after where beforeNames[name] == nil { out.append(Change(section: section, name: name, kind: .added)) }
            for (name, _) in before where afterNames[name] == nil { out.append(Change(section: section, name: name, kind: .removed)) }
            // A route moved relative to the routes both have (not shifted by an insert or a delete).
            let keptBefore = before.map(\.name).filter { afterNames[$0] != nil }
            var position: [String: Int] = [:]
            for (i, name) in keptBefore.enumerated() { position[name] = i }
            var kept = 0  // the route's place among the kept ones, after the change
            for (name, value) in after {
                guard let previous = beforeNames[name] else { continue }
                let moved = section == .routes && position[name] != kept
                kept += 1
                if moved || previous != value { out.append(Change(section: section, name: name, kind: .changed)) }
            }
        }
        return out
    }

    /// The entities of `section` with their names, in document order (sorted for mappings).
    private func entities(_ section: Section) -> [(name: String, value: JSONValue)] {
        switch section {
        case .scripts: return scripts.keys.sorted().map { ($0, .string(scripts[$0]!)) }
        case .routes, .plugins:
            guard case .array(let items) = sections[section] else { return [] }
            return items.enumerated().map { (Self.itemName(section, $1, index: $0), $1) }
        case .upstreams, .keysets, .apikeys:
            guard case .object(let members) = sections[section] else { return [] }
            return members.keys.sorted().map { ($0, members[$0]!) }
        }
    }

    /// A one-line summary of `changes`, for the versions list and the log.
    public static func summary(_ changes: [Change]) -> String {
        guard !changes.isEmpty else { return "no change" }
        let listed = changes.prefix(5).map(\.description).joined(separator: ", ")
        return changes.count > 5 ? "\(listed) and \(changes.count - 5) more" : listed
    }

    // MARK: YAML

    /// The config sections of a YAML file's root, as written (before `${VAR}` expansion).
    static func sections(of root: YAMLNode) -> [Section: JSONValue] {
        guard case .mapping(let mapping) = root else { return [:] }
        var out: [Section: JSONValue] = [:]
        for (key, value) in mapping {
            guard let name = key.string, let section = Section(rawValue: name), section != .scripts else { continue }
            if section == .plugins, case .mapping(let plugins) = value {
                out[section] = plugins.first { $0.key.string == "global" }.map { JSONValue($0.value) } ?? .array([])
            } else {
                out[section] = JSONValue(value)
            }
        }
        return out
    }

    /// `root` with its config sections replaced by this document's (`plugins.dirs` kept).
    func replacingSections(of root: YAMLNode) -> YAMLNode {
        guard case .mapping(let mapping) = root else { return root }
        var pairs: [(YAMLNode, YAMLNode)] = []
        var pluginDirs: YAMLNode?
        for (key, value) in mapping {
            if let name = key.string, let section = Section(rawValue: name), section != .scripts {
                if section == .plugins, case .mapping(let plugins) = value { pluginDirs = plugins.first { $0.key.string == "dirs" }?.value }
                continue
            }
            pairs.append((key, value))
        }
        for section in Self.configSections {
            guard var value = sections[section]?.node else { continue }
            if section == .plugins, let pluginDirs {
                value = YAMLNode.mapping(.init([(YAMLNode.scalar(.init("dirs")), pluginDirs), (YAMLNode.scalar(.init("global")), value)]))
            }
            pairs.append((YAMLNode.scalar(.init(section.rawValue)), value))
        }
        return YAMLNode.mapping(.init(pairs))
    }
}
