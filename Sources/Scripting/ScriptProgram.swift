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
    public let modules: [any LuaModule]
    public let settings: ScriptsConfig
    public let clock: any ScriptClock
    public let logger: Logger
    /// Lua sources run in every state's prelude with `(base, freeze)`: how the test harness
    /// adds `describe`, `it` and `assert`. Empty in the gateway.
    public let extensions: [String]
    /// Records the lines scripts run (`moongate test --coverage`); nil in the gateway.
    public let coverage: CoverageRecorder?
    /// States get the system's unbudgeted pattern functions: only for the benchmark that
    /// compares ours with them (`RuntimeMicrobenchmark`), never for a request.
    let stockPatterns: Bool

    public convenience init(
        scripts: ScriptSet, policies: [String], routers: [String] = [], modules: [any LuaModule], settings: ScriptsConfig,
        clock: any ScriptClock = SystemClock(), logger: Logger = Logger(label: "moongate.scripts"),
        extensions: [String] = [], coverage: CoverageRecorder? = nil
    ) {
        self.init(
            scripts: scripts, policies: policies, routers: routers, modules: modules, settings: settings, clock: clock, logger: logger,
            extensions: extensions, coverage: coverage, stockPatterns: false)
    }

    init(
        scripts: ScriptSet, policies: [String], routers: [String], modules: [any LuaModule], settings: ScriptsConfig,
        clock: any ScriptClock, logger: Logger, extensions: [String], coverage: CoverageRecorder?, stockPatterns: Bool
    ) {
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
        for policy in policies + routers where scripts.files[policy] == nil {
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
