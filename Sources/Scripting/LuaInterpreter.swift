import CLuaRuntime
import Synchronization
import Config

/// One Lua interpreter (a `lua_State` and its heap) with the sandbox and a generation's
/// policies loaded, shared by the requests of one event loop: each request runs on a
/// `LuaState`, its own thread (coroutine) of the interpreter, and they take turns, as
/// OpenResty's requests do on a worker's VM. A request waiting on Redis or a body holds a
/// thread, about a kilobyte, not an interpreter (measured: 240 KB of RSS each, which was
/// most of the gateway's memory under load).
///
/// Loop-confined. An interpreter a run failed on is `retired`: no request starts on it
/// again, and it is closed once the last run on it ends (the last `LuaState` lets it go).
public final class LuaInterpreter {
    public let L: OpaquePointer
    public let program: ScriptProgram
    let budget: UnsafeMutablePointer<mg_budget>
    private var requireRef: Int32 = LUA_NOREF
    private var stashRef: Int32 = LUA_NOREF
    private var unstashRef: Int32 = LUA_NOREF
    private var chainRef: Int32 = LUA_NOREF
    /// What each of the program's prelude extensions returned.
    public private(set) var extensionRefs: [Int32] = []
    /// Per policy (as in `program.policies`), the registry refs of its phase functions.
    private var phases: [[Int32]] = []
    /// Heap bytes right after loading: the interpreter's own footprint.
    public private(set) var footprint = 0
    /// Heap bytes after the last full collection (the footprint at first).
    private var liveAfterCollect = 0
    /// A run failed here: no new request starts on it.
    public internal(set) var retired = false
    /// The request whose turn it is (set for each turn, nil between them), for API modules.
    unowned(unsafe) var active: LuaState?
    /// Lines logged while no request runs (module code at load time).
    var loadLogLines = 0

    /// A request that grew the heap by more than this has its garbage collected when it ends
    /// (a young-generation step: about 150 ns, measured; requests that allocate little skip it).
    static let collectAfter = 8 * 1024
    /// Growth over twice the live heap after which a full collection runs.
    static let collectAbove = 64 * 1024

    /// Creates an interpreter and loads every policy of `program` (running their module code).
    public init(program: ScriptProgram) throws(ScriptError) {
        self.program = program
        budget = .allocate(capacity: 1)
        budget.initialize(to: mg_budget())
        budget.pointee.limit = Int.max
        budget.pointee.slack = 256 * 1024
        guard let L = mg_newstate(budget) else { fatalError("lua_newstate failed: out of memory") }
        self.L = L
        budget.pointee.owner = Unmanaged.passUnretained(self).toOpaque()
        if program.counting == .onDemand, program.coverage == nil { budget.pointee.watched = 1 }
        // On failure, deinit closes the state: a class whose initializer throws after
        // initializing every property is deinitialized.
        try setUp()
    }

    deinit {
        lua_close(L)
        budget.deallocate()
    }

    private func setUp() throws(ScriptError) {
        let registry = mg_registry_index()
        mg_open_sandbox_libs(L, program.stockPatterns ? 1 : 0)
        // Modules go to `__api`, where the prelude picks them up and freezes them.
        lua_createtable(L, 0, Int32(program.modules.count + 4))
        for module in program.modules {
            lua_createtable(L, 0, 8)
            module.register(L)
            lua_setfield(L, -2, module.name)
        }
        mg_open_json(L)
        lua_setfield(L, -2, "json")
        BuiltinModules.register(L)
        lua_setglobal(L, "__api")

        let prelude = Prelude.source
        let loaded = prelude.utf8CString.withUnsafeBufferPointer { mg_load(L, $0.baseAddress, $0.count - 1, "=prelude") }
        guard loaded == LUA_OK else { fatalError("the prelude does not compile: \(Lua.string(L, -1) ?? "")") }
        lua_pushlightuserdata(L, mg_yield_sentinel())
        mg_push_swift_function(L, moduleSource)
        lua_createtable(L, Int32(program.extensions.count), 0)
        for (i, source) in program.extensions.enumerated() {
            Lua.push(L, source)
            lua_rawseti(L, -2, lua_Integer(i + 1))
        }
        guard mg_pcall(L, 3, 1, 0) == LUA_OK else { fatalError("the prelude failed: \(Lua.string(L, -1) ?? "")") }
        lua_getfield(L, -1, "require")
        requireRef = luaL_ref(L, registry)
        lua_getfield(L, -1, "stash")
        stashRef = luaL_ref(L, registry)
        lua_getfield(L, -1, "unstash")
        unstashRef = luaL_ref(L, registry)
        lua_getfield(L, -1, "chain")
        chainRef = luaL_ref(L, registry)
        lua_getfield(L, -1, "extensions")
        for i in 0..<program.extensions.count {
            lua_rawgeti(L, -1, lua_Integer(i + 1))
            extensionRefs.append(luaL_ref(L, registry))
        }
        mg_pop(L, 2)

        if let coverage = program.coverage {
            mg_set_line_hook(L, coverageHook, Unmanaged.passUnretained(coverage).toOpaque())
        }
        for policy in program.policies {
            phases.append(try loadModule(policy, phases: Phase.policyPhases))
        }
        for router in program.routers {
            phases.append(try loadModule(router, phases: [.route]))
        }
        for chain in program.chains {
            phases.append(try loadChain(chain))
        }
        lua_settop(L, 0)
        mg_gc(L, LUA_GCCOLLECT, 0)
        footprint = budget.pointee.used
        liveAfterCollect = footprint
    }

    /// Budgets for loading a module: generous, but a module that loops forever at load
    /// time must not hang a reload.
    static let loadBudget: ScriptBudget = {
        var b = ScriptBudget()
        b.instructions = 100_000_000
        b.time = .seconds(2)
        b.memory = 64 * 1024 * 1024
        b.coroutines = 100
        return b
    }()

    private func loadModule(_ module: String, phases allowed: [Phase]) throws(ScriptError) -> [Int32] {
        let registry = mg_registry_index()
        let file = program.scripts.files[module]?.path
        begin(Self.loadBudget)
        defer { mg_budget_end(budget) }
        lua_rawgeti(L, registry, lua_Integer(requireRef))
        Lua.push(L, module)
        guard mg_pcall(L, 1, 1, 0) == LUA_OK else {
            let message = Lua.string(L, -1) ?? "module \(module) raised a non-string error"
            lua_settop(L, 0)
            throw ScriptError(luaMessage: message)
        }
        return try readPhases(file: file, allowed: allowed)
    }

    /// Builds a plugin chain's phase functions (the prelude's `chain`), under the load budget.
    private func loadChain(_ chain: PluginChain) throws(ScriptError) -> [Int32] {
        let registry = mg_registry_index()
        begin(Self.loadBudget)
        defer { mg_budget_end(budget) }
        lua_rawgeti(L, registry, lua_Integer(chainRef))
        lua_createtable(L, Int32(chain.links.count), 0)
        for (i, link) in chain.links.enumerated() {
            lua_createtable(L, 0, 3)
            Lua.push(L, link.module)
            lua_setfield(L, -2, "module")
            Lua.push(L, link.plugin)
            lua_setfield(L, -2, "name")
            Lua.push(L, json: link.conf)
            lua_setfield(L, -2, "conf")
            lua_rawseti(L, -2, lua_Integer(i + 1))
        }
        if let policy = chain.policy { Lua.push(L, policy) } else { lua_pushnil(L) }
        guard mg_pcall(L, 2, 1, 0) == LUA_OK else {
            let message = Lua.string(L, -1) ?? "the chain \(chain.label) raised a non-string error"
            lua_settop(L, 0)
            throw ScriptError(luaMessage: message)
        }
        return try readPhases(file: nil, allowed: Phase.policyPhases)
    }

    /// The phase functions of the table on top of the stack, as registry refs; clears the stack.
    private func readPhases(file: String?, allowed: [Phase]) throws(ScriptError) -> [Int32] {
        let registry = mg_registry_index()
        let expected = allowed == [.route] ? "a route function" : "access, response or log"
        guard lua_type(L, -1) == LUA_TTABLE else {
            lua_settop(L, 0)
            let what = allowed == [.route] ? "a router must return a table with a route function" : "a policy must return a table of phase functions (access, response, log)"
            throw ScriptError(file: file, line: nil, message: what)
        }
        var refs = [Int32](repeating: LUA_NOREF, count: Phase.allCases.count)
        lua_pushnil(L)
        while lua_next(L, -2) != 0 {
            let key = Lua.string(L, -2)
            guard let key, let phase = allowed.first(where: { $0.name == key }) else {
                let shown = key.map { "\"\($0)\"" } ?? "a \(Lua.typeName(L, -2)) key"
                lua_settop(L, 0)
                throw ScriptError(file: file, line: nil, message: "unknown phase \(shown) in the returned table (expected \(expected))")
            }
            guard lua_type(L, -1) == LUA_TFUNCTION else {
                let type = Lua.typeName(L, -1)
                lua_settop(L, 0)
                throw ScriptError(file: file, line: nil, message: "phase \"\(key)\" must be a function, not a \(type)")
            }
            refs[phase.rawValue] = luaL_ref(L, registry)  // pops the value, keeps the key
        }
        guard refs.contains(where: { $0 != LUA_NOREF }) else {
            lua_settop(L, 0)
            let what = allowed == [.route] ? "the router defines no route function" : "the policy defines no phase (expected access, response or log)"
            throw ScriptError(file: file, line: nil, message: what)
        }
        lua_settop(L, 0)
        return refs
    }

    /// Requires `module` under the load budget and lets `body` read what it returned (on top
    /// of the stack; read it with raw access, no metamethods): how plugins' schemas are read.
    public func inspect<T>(module: String, _ body: (OpaquePointer) throws(ScriptError) -> T) throws(ScriptError) -> T {
        begin(Self.loadBudget)
        defer {
            mg_budget_end(budget)
            lua_settop(L, 0)
        }
        lua_rawgeti(L, mg_registry_index(), lua_Integer(requireRef))
        Lua.push(L, module)
        guard mg_pcall(L, 1, 1, 0) == LUA_OK else {
            throw ScriptError(luaMessage: Lua.string(L, -1) ?? "module \(module) raised a non-string error")
        }
        return try body(L)
    }

    /// Loads (requires) a module of the program's scripts, as `require` would, under the load
    /// budget; the harness loads a test file this way. A budget exceeded retires the interpreter.
    public func load(module: String) throws(ScriptError) {
        begin(Self.loadBudget)
        defer { mg_budget_end(budget) }
        lua_rawgeti(L, mg_registry_index(), lua_Integer(requireRef))
        Lua.push(L, module)
        let status = mg_pcall(L, 1, 0, 0)
        defer { lua_settop(L, 0) }
        if status != LUA_OK {
            if budget.pointee.killed != MG_KILL_NONE { retired = true }
            throw ScriptError(luaMessage: Lua.string(L, -1) ?? "module \(module) raised a non-string error")
        }
    }

    /// The registry ref of `phase` of policy `policy`, or `LUA_NOREF`.
    func phase(_ phase: Phase, policy: Int) -> Int32 {
        phases[policy][phase.rawValue]
    }

    /// Whether policy `policy` defines `phase`.
    public func has(_ phase: Phase, policy: Int) -> Bool {
        phases[policy][phase.rawValue] != LUA_NOREF
    }

    /// Sets `b` as the budget of the run that starts now.
    func begin(_ b: ScriptBudget) {
        let ns = UInt64(b.time.components.seconds) * 1_000_000_000 + UInt64(b.time.components.attoseconds / 1_000_000_000)
        mg_budget_begin(budget, b.memory, Int64(b.instructions), mg_now_ns() &+ ns, Int32(b.depth), Int32(b.coroutines))
    }

    // MARK: request globals

    /// Puts aside the request globals the turn that just ended assigned, if it assigned any:
    /// a registry ref to give to `unstash`, or `LUA_NOREF`.
    func stashGlobals() -> Int32 {
        guard budget.pointee.env_dirty != 0 else { return LUA_NOREF }
        budget.pointee.env_dirty = 0
        let registry = mg_registry_index()
        lua_rawgeti(L, registry, lua_Integer(stashRef))
        guard mg_pcall(L, 0, 1, 0) == LUA_OK else {
            // Only out of memory: the globals cannot be kept apart, so the state is not reused.
            retired = true
            lua_settop(L, 0)
            return LUA_NOREF
        }
        return luaL_ref(L, registry)
    }

    /// Gives back globals `stashGlobals` put aside, for the request's next turn.
    func unstashGlobals(_ ref: Int32) {
        let registry = mg_registry_index()
        lua_rawgeti(L, registry, lua_Integer(unstashRef))
        lua_rawgeti(L, registry, lua_Integer(ref))
        luaL_unref(L, registry, ref)
        if mg_pcall(L, 1, 0, 0) != LUA_OK {
            retired = true
            lua_settop(L, 0)
        }
        budget.pointee.env_dirty = 1
    }

    // MARK: memory

    /// A request ended that began with the heap at `usedAtBegin` bytes: garbage is
    /// collected once the heap has grown.
    func collect(usedAtBegin: Int) {
        let used = budget.pointee.used
        if used > usedAtBegin + Self.collectAfter {
            mg_gc(L, LUA_GCSTEP, 0)
        }
        // A full collection when the heap doubles since the last one: live data a module keeps
        // (caches, counters) moves the mark up, so it is not collected again on every request.
        if budget.pointee.used > 2 * liveAfterCollect + Self.collectAbove {
            mg_gc(L, LUA_GCCOLLECT, 0)
            liveAfterCollect = budget.pointee.used
        }
    }

    /// Heap bytes in use now.
    public var memory: Int { budget.pointee.used }
}

/// `module_source(name)` for the prelude's `require`: the source and chunk name of a module
/// in the scripts directory, or nil and a message.
private let moduleSource: LuaFunction = { L in
    let L = L!
    let program = Lua.owner(L).program
    let name = Lua.string(L, 1) ?? ""
    guard let file = program.scripts.files[name] else {
        lua_pushnil(L)
        if ScriptSet.moduleName(name.split(separator: ".").joined(separator: "/") + ".lua") == nil {
            Lua.push(L, "module '\(name)' not found: module names are made of names separated by dots, such as lib.util")
            return 2
        }
        let path = name.split(separator: ".").joined(separator: "/")
        Lua.push(L, "module '\(name)' not found: no \(path).lua in \(program.scripts.directory)")
        return 2
    }
    file.source.withUnsafeBytes { Lua.push(L, bytes: $0) }
    Lua.push(L, "@" + file.path)
    return 2
}

/// Lines scripts run, by chunk name (`moongate test --coverage`).
public final class CoverageRecorder: Sendable {
    private let lines = Mutex<[String: Set<Int>]>([:])

    public init() {}

    func hit(_ source: String, _ line: Int) {
        lines.withLock { _ = $0[source, default: []].insert(line) }
    }

    /// Lines run per script path (chunk names without their `@`).
    public var hits: [String: Set<Int>] { lines.withLock { $0 } }
}

private let coverageHook: @convention(c) (UnsafeMutableRawPointer?, UnsafePointer<CChar>?, Int32) -> Void = { context, source, line in
    guard let context, let source, source.pointee == UInt8(ascii: "@") else { return }
    Unmanaged<CoverageRecorder>.fromOpaque(context).takeUnretainedValue().hit(String(cString: source + 1), Int(line))
}

@available(*, unavailable)
extension LuaInterpreter: Sendable {}
