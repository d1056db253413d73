import CLuaRuntime
import Config
import Logging

/// A generation's scripts, ready to load into states: the scripts directory as read, the
/// policies routes name, and the API modules states get. Immutable and shared by workers;
/// each worker builds its own states from it.
public final class ScriptProgram: Sendable {
    public let scripts: ScriptSet
    /// Module names of the policies routes run; a route refers to one by index.
    public let policies: [String]
    /// Module names of listeners' routers; router `i` has index `policies.count + i`.
    public let routers: [String]
    /// Plugin chains routes run; chain `i` has index `policies.count + routers.count + i`.
    public let chains: [PluginChain]
    public let modules: [any LuaModule]
    public let settings: ScriptsConfig
    public let clock: any ScriptClock
    public let logger: Logger
    /// Lua sources run in every state's prelude with `(base, freeze)`: how the test harness
    /// adds `describe`, `it` and `assert`. Empty in the gateway.
    public let extensions: [String]
    /// Records the lines scripts run (`moongate test --coverage`); nil in the gateway.
    public let coverage: CoverageRecorder?
    /// How states count a script's instructions for its budget.
    public let counting: InstructionCounting
    /// States get the system's unbudgeted pattern functions: only for the benchmark that
    /// compares ours with them (`RuntimeMicrobenchmark`), never for a request.
    let stockPatterns: Bool

    public convenience init(
        scripts: ScriptSet, policies: [String], routers: [String] = [], chains: [PluginChain] = [], modules: [any LuaModule],
        settings: ScriptsConfig, clock: any ScriptClock = SystemClock(), logger: Logger = Logger(label: "moongate.scripts"),
        extensions: [String] = [], coverage: CoverageRecorder? = nil, counting: InstructionCounting = .exact
    ) {
        self.init(
            scripts: scripts, policies: policies, routers: routers, chains: chains, modules: modules, settings: settings, clock: clock,
            logger: logger, extensions: extensions, coverage: coverage, stockPatterns: false, counting: counting)
    }

    init(
        scripts: ScriptSet, policies: [String], routers: [String], chains: [PluginChain] = [], modules: [any LuaModule],
        settings: ScriptsConfig, clock: any ScriptClock, logger: Logger, extensions: [String], coverage: CoverageRecorder?,
        stockPatterns: Bool, counting: InstructionCounting = .exact
    ) {
        self.counting = counting
        self.chains = chains
        self.stockPatterns = stockPatterns
        self.extensions = extensions
        self.coverage = coverage
        self.scripts = scripts
        self.policies = policies
        self.routers = routers
        self.modules = modules
        self.settings = settings
        self.clock = clock
        self.logger = logger
    }

    /// Index of a policy module in `policies`.
    public func policyIndex(_ module: String) -> Int? { policies.firstIndex(of: module) }

    /// Index of a router module (after the policies).
    public func routerIndex(_ module: String) -> Int? { routers.firstIndex(of: module).map { policies.count + $0 } }

    /// Index of a plugin chain (after the policies and routers).
    public func chainIndex(_ chain: PluginChain) -> Int? { chains.firstIndex(of: chain).map { policies.count + routers.count + $0 } }

    /// What a policy index runs, for messages and metric labels: the policy's module, or
    /// `plugins:` and the chain's plugins.
    public func label(of index: Int) -> String {
        if index >= 0, index < policies.count { return policies[index] }
        let chain = index - policies.count - routers.count
        if chain >= 0, chain < chains.count { return chains[chain].label }
        return "?"
    }

    /// The plugin whose file a failure's `file:line` points into, if any.
    public func plugin(at location: String) -> String? {
        guard let colon = location.lastIndex(of: ":") else { return nil }
        let path = location[..<colon]
        for chain in chains {
            for link in chain.links where link.path == path { return link.plugin }
        }
        return nil
    }

    /// Compiles every script and loads every policy in a fresh state: what a reload or
    /// `moongate check` reports. Returns that state's footprint in bytes.
    @discardableResult
    public func validate() throws(ScriptErrors) -> Int {
        var errors: [ScriptError] = []
        let L = luaL_newstate()!
        defer { lua_close(L) }
        for file in scripts.files.values.sorted(by: { $0.path < $1.path }) {
            let status = file.source.withUnsafeBytes { raw in
                mg_load(L, raw.baseAddress?.assumingMemoryBound(to: CChar.self), raw.count, "@" + file.path)
            }
            if status != LUA_OK { errors.append(ScriptError(luaMessage: Lua.string(L, -1) ?? "does not compile")) }
            lua_settop(L, 0)
        }
        for policy in policies + routers + chains.flatMap({ $0.links.map(\.module) + ($0.policy.map { [$0] } ?? []) }) where scripts.files[policy] == nil {
            let path = policy.split(separator: ".").joined(separator: "/")
            errors.append(ScriptError(file: nil, line: nil, message: "policy \(policy): no \(path).lua in \(scripts.directory)"))
        }
        if !errors.isEmpty { throw ScriptErrors(errors) }
        do {
            return try LuaState(program: self).footprint
        } catch {
            throw ScriptErrors([error])
        }
    }
}

/// A route's plugins in the order they run, and the route's own policy after them: what
/// one policy index runs, built into phase functions in each state (`LuaState`).
public struct PluginChain: Sendable, Hashable {
    public struct Link: Sendable, Hashable {
        /// The plugin's name (`cors`).
        public var plugin: String
        /// Its module among the program's scripts (`plugin:cors`).
        public var module: String
        /// Its file as messages show it (`plugins/cors.lua`).
        public var path: String
        /// The validated configuration, defaults filled in; read-only to the phases.
        public var conf: JSONValue

        public init(plugin: String, module: String, path: String, conf: JSONValue) {
            self.plugin = plugin
            self.module = module
            self.path = path
            self.conf = conf
        }
    }

    public var links: [Link]
    /// The route's `policy` module, run after the plugins.
    public var policy: String?

    public init(links: [Link], policy: String?) {
        self.links = links
        self.policy = policy
    }

    /// `plugins:cors,key-auth+policy` — for logs and metric labels.
    public var label: String {
        "plugins:" + links.map(\.plugin).joined(separator: ",") + (policy.map { "+" + $0 } ?? "")
    }
}

/// How a state counts the instructions its scripts run, for the `instructions` budget (and
/// the checks that ride on it: time, depth).
public enum InstructionCounting: Sendable, CaseIterable {
    /// Every instruction, through Lua's count hook: exact and reproducible (`moongate test`,
    /// coverage). Lua 5.4 then sends each instruction through its hook dispatcher, which
    /// doubles the CPU of plain Lua code.
    case exact
    /// Only runs that last: a script runs without the hook until a watchdog sees the run pass
    /// a millisecond, and is counted from then on; its first one to two milliseconds are not
    /// counted. Coroutines a script creates are always counted. The gateway's data plane: a
    /// script within its budget in `moongate test` (exact) is within it here too.
    case onDemand
}
