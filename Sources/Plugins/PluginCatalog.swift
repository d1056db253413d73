import CLuaRuntime
import Config
import FoundationEssentials
import Scripting

/// A plugin as its module describes itself: name, priority, schema and phases.
public struct PluginDefinition: Sendable {
    public let name: String
    /// Higher runs earlier in a chain (as in Kong); ties keep the configured order.
    public let priority: Int
    public let schema: PluginSchema
    /// The phases it defines, of access, response and log.
    public let phases: [String]
    public let description: String
    public let version: String?
    /// Its source, as a module of the program's scripts (`plugin:NAME`).
    public let file: ScriptFile
    public let builtin: Bool

    public static func module(_ name: String) -> String { "plugin:" + name }
}

/// The plugins a generation may use: those built into the binary, and the user's from
/// `plugins.dirs` (one `NAME.lua` each; `NAME_test.lua` files are their tests).
public struct PluginCatalog: Sendable {
    public let plugins: [String: PluginDefinition]

    /// Built-in plugins, described once per process (their sources never change).
    public static let builtins: [String: PluginDefinition] = {
        let files = BuiltinPlugins.sources.map { name, source in
            ScriptFile(module: PluginDefinition.module(name), path: "plugins/\(name).lua", source: source)
        }
        do {
            return try describe(files, builtin: true, modules: [])
        } catch {
            fatalError("a built-in plugin does not load: \(error)")
        }
    }()

    /// The built-ins and the plugins in `dirs`. A user plugin that does not load, or takes a
    /// built-in's name, is an error (the running generation keeps serving).
    public static func load(dirs: [String], modules: [any LuaModule]) throws(ScriptErrors) -> PluginCatalog {
        var files: [ScriptFile] = []
        var errors: [ScriptError] = []
        let fm = FileManager.default
        for dir in dirs {
            var isDirectory = false
            guard fm.fileExists(atPath: dir, isDirectory: &isDirectory), isDirectory else {
                errors.append(ScriptError(file: dir, line: nil, message: "plugins.dirs: not a directory"))
                continue
            }
            let names = ((try? fm.contentsOfDirectory(atPath: dir)) ?? []).sorted()
            for entry in names where entry.hasSuffix(".lua") && !entry.hasSuffix("_test.lua") {
                let name = String(entry.dropLast(4))
                let path = ScriptSet.shortPath(dir.hasSuffix("/") ? dir + entry : dir + "/" + entry)
                guard isValidName(name) else {
                    errors.append(ScriptError(file: path, line: nil, message: "a plugin's file name is its name: lower-case letters, digits, - and _"))
                    continue
                }
                if builtins[name] != nil {
                    errors.append(ScriptError(file: path, line: nil, message: "\"\(name)\" is a built-in plugin's name; choose another"))
                    continue
                }
                if let other = files.first(where: { $0.module == PluginDefinition.module(name) }) {
                    errors.append(ScriptError(file: path, line: nil, message: "plugin \"\(name)\" is also \(other.path)"))
                    continue
                }
                guard let data = fm.contents(atPath: path), data.count <= ScriptSet.maxFileBytes else {
                    errors.append(ScriptError(file: path, line: nil, message: "cannot read the file (or larger than 1 MiB)"))
                    continue
                }
                files.append(ScriptFile(module: PluginDefinition.module(name), path: path, source: Array(data)))
            }
        }
        if !errors.isEmpty { throw ScriptErrors(errors) }
        var plugins = builtins
        if !files.isEmpty {
            let user: [String: PluginDefinition]
            do {
                user = try describe(files, builtin: false, modules: modules)
            } catch {
                throw ScriptErrors([error])
            }
            plugins.merge(user) { a, _ in a }
        }
        return PluginCatalog(plugins: plugins)
    }

    public init(plugins: [String: PluginDefinition]) {
        self.plugins = plugins
    }

    static func isValidName(_ name: String) -> Bool {
        guard let first = name.utf8.first, (UInt8(ascii: "a")...UInt8(ascii: "z")).contains(first), name.utf8.count <= 64 else { return false }
        return name.utf8.allSatisfy { c in
            (UInt8(ascii: "a")...UInt8(ascii: "z")).contains(c) || (UInt8(ascii: "0")...UInt8(ascii: "9")).contains(c) || c == UInt8(ascii: "-")
                || c == UInt8(ascii: "_")
        }
    }

    static let moduleKeys: Set<String> = ["schema", "priority", "access", "response", "log", "prepare", "description", "version"]

    /// Loads each file in a fresh sandboxed state and reads what its module returns.
    static func describe(_ files: [ScriptFile], builtin: Bool, modules: [any LuaModule]) throws(ScriptError) -> [String: PluginDefinition] {
        let program = ScriptProgram(
            scripts: ScriptSet(directory: "plugins", files: files), policies: [], modules: modules, settings: ScriptsConfig())
        let state = try LuaState(program: program)
        var out: [String: PluginDefinition] = [:]
        for file in files {
            let name = String(file.module.dropFirst("plugin:".count))
            func bad(_ message: String) -> ScriptError { ScriptError(file: file.path, line: nil, message: message) }
            out[name] = try state.inspect(module: file.module) { L throws(ScriptError) in
                guard lua_type(L, -1) == LUA_TTABLE else { throw bad("a plugin must return a table (schema, priority, and access, response or log)") }
                let table = lua_gettop(L)
                lua_pushnil(L)
                while lua_next(L, table) != 0 {
                    let key = Lua.string(L, -2)
                    mg_pop(L, 1)
                    guard let key, moduleKeys.contains(key) else {
                        throw bad("unknown key \(key.map { "\"\($0)\"" } ?? "(not a string)") in the returned table (expected: \(moduleKeys.sorted().joined(separator: ", ")))")
                    }
                }
                var phases: [String] = []
                for phase in ["access", "response", "log", "prepare"] {
                    let t = Lua.rawField(L, table, phase)
                    mg_pop(L, 1)
                    if t == LUA_TNIL { continue }
                    guard t == LUA_TFUNCTION else { throw bad("\(phase) must be a function") }
                    if phase != "prepare" { phases.append(phase) }
                }
                guard !phases.isEmpty else { throw bad("the plugin defines no phase (access, response or log)") }
                var priority = 0
                let pt = Lua.rawField(L, table, "priority")
                if pt != LUA_TNIL {
                    guard let p = Lua.integer(L, -1) else { throw bad("priority must be an integer") }
                    priority = p
                }
                mg_pop(L, 1)
                let description = Lua.rawField(L, table, "description") == LUA_TSTRING ? Lua.string(L, -1)! : ""
                mg_pop(L, 1)
                let version = Lua.rawField(L, table, "version") == LUA_TSTRING ? Lua.string(L, -1) : nil
                mg_pop(L, 1)
                let schema: PluginSchema
                if Lua.rawField(L, table, "schema") == LUA_TNIL {
                    schema = PluginSchema(fields: [:])
                } else {
                    do throws(ScriptError) {
                        schema = try PluginSchema.read(L, -1, plugin: name)
                    } catch {
                        throw bad(error.message)
                    }
                }
                mg_pop(L, 1)
                return PluginDefinition(
                    name: name, priority: priority, schema: schema, phases: phases, description: description, version: version, file: file,
                    builtin: builtin)
            }
        }
        return out
    }

    // MARK: chains

    /// Each route's chain (nil for a route with no plugins): the global plugins then the
    /// route's own, each group by priority (higher first; ties in configured order), with
    /// a route's entry replacing a global one of the same name. Every plugin's config is
    /// checked against its schema; all problems are reported at once.
    public func chains(for config: GatewayConfig) throws(ConfigError) -> [PluginChain?] {
        var problems: [ConfigDiagnostic] = []
        var checked: [PluginUse: PluginChain.Link] = [:]
        func link(_ use: PluginUse) -> PluginChain.Link? {
            if let done = checked[use] { return done }
            guard let definition = plugins[use.name] else {
                let known = plugins.keys.sorted().joined(separator: ", ")
                var place = use.place
                place.path += ".name"
                place.pointer += "/name"
                problems.append(place.problem("unknown plugin \"\(use.name)\" (known: \(known))"))
                return nil
            }
            guard let conf = definition.schema.validate(use.config, into: &problems) else { return nil }
            let made = PluginChain.Link(plugin: use.name, module: definition.file.module, path: definition.file.path, conf: conf)
            checked[use] = made
            return made
        }
        func ordered(_ uses: [PluginUse]) -> [PluginUse] {
            uses.enumerated().sorted { a, b in
                let pa = plugins[a.element.name]?.priority ?? 0, pb = plugins[b.element.name]?.priority ?? 0
                return pa != pb ? pa > pb : a.offset < b.offset
            }.map(\.element)
        }
        let global = ordered(config.plugins.global)
        var out: [PluginChain?] = []
        for route in config.routes {
            let own = Set(route.plugins.map(\.name))
            let uses = global.filter { !own.contains($0.name) } + ordered(route.plugins)
            if uses.isEmpty {
                out.append(nil)
                continue
            }
            let links = uses.compactMap(link)
            out.append(links.count == uses.count ? PluginChain(links: links, policy: route.policy) : nil)
        }
        // Global plugins are checked even when no route runs them.
        for use in config.plugins.global { _ = link(use) }
        if !problems.isEmpty {
            var seen = Set<ConfigDiagnostic>()
            throw ConfigError(problems.filter { seen.insert($0).inserted })
        }
        return out
    }

    /// The sources of the plugins `chains` use, to add to the program's scripts.
    public func files(for chains: [PluginChain?]) -> [ScriptFile] {
        var names: [String] = []
        for chain in chains.compactMap({ $0 }) {
            for link in chain.links where !names.contains(link.plugin) { names.append(link.plugin) }
        }
        return names.compactMap { plugins[$0]?.file }
    }
}
