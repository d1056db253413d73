import CLuaRuntime
import FoundationEssentials
import Synchronization
import Config
import Logging

/// The phases a policy may define, in the order a request meets them.
public enum Phase: Int, Sendable, CaseIterable {
    /// Before the upstream: may change the request, pick the upstream, or answer early.
    case access
    /// On the upstream's answer.
    case response
    /// After the response is sent.
    case log
    /// A listener's router: picks the route (returns its name, or nil for the config's match).
    case route

    public var name: String {
        switch self {
        case .access: return "access"
        case .response: return "response"
        case .log: return "log"
        case .route: return "route"
        }
    }

    /// The phases a policy may define.
    public static let policyPhases: [Phase] = [.access, .response, .log]
}

/// Why a script's run ended early.
public struct ScriptFailure: Error, Sendable {
    /// The budget that was exceeded (`instructions`, `time`, `memory`, `depth`,
    /// `coroutines`), or nil for an error the script raised.
    public var budget: String?
    public var message: String
    /// `file:line` of the innermost script frame.
    public var location: String?
    public var traceback: String
}

/// How a run of a phase ended.
public enum RunResult {
    case done
    /// Suspended in an API call that waits; the caller resumes it with the call's results,
    /// or abandons it (an early answer).
    case waiting
    case failed(ScriptFailure)
}

/// One Lua interpreter with the sandbox and a generation's policies loaded. Owned by one
/// event loop's pool and never used from two threads; a request borrows it while its phases
/// run. A state that failed (an error, a budget) is `broken` and is closed, never reused.
public final class LuaState {
    public let L: OpaquePointer
    public let program: ScriptProgram
    let budget: UnsafeMutablePointer<mg_budget>
    /// The coroutine phases run in, reused while runs end cleanly.
    private var thread: OpaquePointer
    private var requireRef: Int32 = LUA_NOREF
    private var resetRef: Int32 = LUA_NOREF
    private var ctxRef: Int32 = LUA_NOREF
    private var chainRef: Int32 = LUA_NOREF
    /// What each of the program's prelude extensions returned.
    public private(set) var extensionRefs: [Int32] = []
    /// Per policy (as in `program.policies`), the registry refs of its phase functions.
    private var phases: [[Int32]] = []
    public private(set) var broken = false
    /// A phase is suspended in a wait; it must be resumed or abandoned before anything else runs.
    public private(set) var suspended = false
    /// Heap bytes right after loading: the state's own footprint.
    public private(set) var footprint = 0
    /// Time budget left when a phase suspended, so waits do not count against it.
    private var timeLeftNs: UInt64 = 0
    /// Lines the current request has logged (see `BuiltinModules.maxLinesPerRequest`).
    var logLines = 0
    /// What the last `route` phase returned, if a string (a route name).
    public private(set) var routeResult: String?
    private var capturing = false
    private var resultsReader: ((OpaquePointer, Int32) -> Void)?
    /// The request being served, for modules that need more than `Lua.current` (logging).
    public private(set) var host: ScriptHost?

    /// A request that grew the heap by more than this has its garbage collected when it ends
    /// (a young-generation step: about 150 ns, measured; requests that allocate little skip it).
    static let collectAfter = 8 * 1024
    /// Growth over twice the live heap after which a full collection runs.
    static let collectAbove = 64 * 1024
    /// Heap bytes when the current request began.
    private var usedAtBegin = 0
    /// Heap bytes after the last full collection (the footprint at first).
    private var liveAfterCollect = 0

    /// Creates a state and loads every policy of `program` (running their module code).
    public init(program: ScriptProgram) throws(ScriptError) {
        self.program = program
        budget = .allocate(capacity: 1)
        budget.initialize(to: mg_budget())
        budget.pointee.limit = Int.max
        budget.pointee.slack = 256 * 1024
        guard let L = mg_newstate(budget) else { fatalError("lua_newstate failed: out of memory") }
        self.L = L
        thread = L
        budget.pointee.owner = Unmanaged.passUnretained(self).toOpaque()
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
        lua_getfield(L, -1, "reset")
        resetRef = luaL_ref(L, registry)
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
        thread = lua_newthread(L)!
        _ = luaL_ref(L, registry)  // keeps the thread alive
        if program.counting == .onDemand, program.coverage == nil {
            budget.pointee.watched = 1
            mg_watch_thread(thread)
        }
        lua_createtable(L, 0, 0)
        ctxRef = luaL_ref(L, registry)

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
    /// budget; the harness loads a test file this way.
    public func load(module: String) throws(ScriptError) {
        begin(Self.loadBudget)
        defer { mg_budget_end(budget) }
        lua_rawgeti(L, mg_registry_index(), lua_Integer(requireRef))
        Lua.push(L, module)
        let status = mg_pcall(L, 1, 0, 0)
        defer { lua_settop(L, 0) }
        if status != LUA_OK {
            if budget.pointee.killed != MG_KILL_NONE { broken = true }
            throw ScriptError(luaMessage: Lua.string(L, -1) ?? "module \(module) raised a non-string error")
        }
    }

    /// Calls `field` of the table an extension returned, in the phase coroutine and under
    /// `budget` (as a phase runs); `arguments` pushes the arguments and returns how many;
    /// `results` reads what it returned. Waits are not allowed.
    public func call(
        extension index: Int, _ field: String, budget b: ScriptBudget, current: UnsafeMutableRawPointer?,
        arguments: (OpaquePointer) -> Int32, results: (OpaquePointer, Int32) -> Void
    ) -> RunResult {
        if suspended { abandon() }
        capturing = false
        begin(b)
        budget.pointee.current = current
        lua_rawgeti(thread, mg_registry_index(), lua_Integer(extensionRefs[index]))
        lua_getfield(thread, -1, field)
        mg_remove(thread, -2)
        let result = withoutActuallyEscaping(results) { reader in
            resultsReader = reader
            defer { resultsReader = nil }
            return resume(arguments: arguments(thread))
        }
        if case .waiting = result {
            abandon()
            return .failed(ScriptFailure(budget: nil, message: "a test cannot wait", location: nil, traceback: ""))
        }
        return result
    }

    /// Whether policy `policy` defines `phase`.
    public func has(_ phase: Phase, policy: Int) -> Bool {
        phases[policy][phase.rawValue] != LUA_NOREF
    }

    private func begin(_ b: ScriptBudget) {
        let ns = UInt64(b.time.components.seconds) * 1_000_000_000 + UInt64(b.time.components.attoseconds / 1_000_000_000)
        timeLeftNs = ns
        mg_budget_begin(budget, b.memory, Int64(b.instructions), mg_now_ns() &+ ns, Int32(b.depth), Int32(b.coroutines))
    }

    // MARK: requests

    /// Starts a request: a fresh `ctx` shared by its phases.
    public func beginRequest(host: ScriptHost) {
        self.host = host
        usedAtBegin = budget.pointee.used
        logLines = 0
        // Room for a few keys (a consumer, a correlation id, scopes): growing an empty table
        // one key at a time rehashes it at each power of two.
        lua_createtable(L, 0, 4)
        lua_rawseti(L, mg_registry_index(), lua_Integer(ctxRef))
    }

    /// Whether the request's `ctx` holds nothing: its later phases can then run on any state.
    public func ctxIsEmpty() -> Bool {
        lua_rawgeti(L, mg_registry_index(), lua_Integer(ctxRef))
        lua_pushnil(L)
        let empty = lua_next(L, -2) == 0
        lua_settop(L, 0)
        return empty
    }

    /// Runs `phase` of `policy` with `ctx`; `current` is what API functions get from `Lua.current`.
    public func run(_ phase: Phase, policy: Int, budget b: ScriptBudget, current: UnsafeMutableRawPointer) -> RunResult {
        let ref = phases[policy][phase.rawValue]
        guard ref != LUA_NOREF else { return .done }
        if suspended { abandon() }
        capturing = phase == .route
        routeResult = nil
        begin(b)
        budget.pointee.current = current
        let registry = mg_registry_index()
        lua_rawgeti(thread, registry, lua_Integer(ref))
        lua_rawgeti(thread, registry, lua_Integer(ctxRef))
        return resume(arguments: 1)
    }

    /// Resumes a phase that is `.waiting`; `push` pushes the waiting call's results on the
    /// given stack and returns how many. As in a Swift function, `Lua.memoryLeft` tells
    /// what may be pushed, and small pushes cannot fail.
    public func resume(pushing push: (OpaquePointer) -> Int32) -> RunResult {
        lua_settop(thread, 0)
        let limit = budget.pointee.limit
        if limit != UInt.max { budget.pointee.limit = limit + budget.pointee.slack }
        let count = push(thread)
        budget.pointee.limit = limit
        budget.pointee.deadline_ns = mg_now_ns() &+ timeLeftNs
        return resume(arguments: count)
    }

    private func resume(arguments: Int32) -> RunResult {
        var results: Int32 = 0
        suspended = false
        let started = mg_now_ns()
        let status = mg_resume(thread, L, arguments, &results, started)
        host?.scriptRan(nanoseconds: mg_now_ns() &- started)
        if status == LUA_OK {
            if capturing, results >= 1 { routeResult = Lua.string(thread, -results) }
            resultsReader?(thread, results)
            lua_settop(thread, 0)
            mg_budget_end(budget)
            return .done
        }
        if status == LUA_YIELD {
            if results >= 1, lua_touserdata(thread, -results) == mg_yield_sentinel() {
                let now = mg_now_ns()
                let deadline = budget.pointee.deadline_ns
                timeLeftNs = deadline > now ? deadline - now : 0
                budget.pointee.deadline_ns = 0
                suspended = true
                return .waiting
            }
            let failure = ScriptFailure(
                budget: nil, message: "coroutine.yield called outside a coroutine", location: Lua.callerLocation(thread),
                traceback: "")
            discard()
            return .failed(failure)
        }
        let failure = describeFailure()
        discard()
        return .failed(failure)
    }

    /// Gives up a `.waiting` run (the script answered early): its coroutine is reset, which
    /// runs its pending `<close>` handlers under the same budget.
    public func abandon() {
        guard suspended else { return }
        suspended = false
        budget.pointee.deadline_ns = mg_now_ns() &+ timeLeftNs
        let status = mg_reset_thread(thread)
        mg_budget_end(budget)
        if status != LUA_OK { broken = true }
    }

    /// Ends a request: drops `ctx`, replaces request globals a script set, and collects
    /// garbage once the heap has grown.
    public func endRequest() {
        if suspended { abandon() }
        mg_budget_end(budget)
        host = nil
        guard !broken else { return }
        let registry = mg_registry_index()
        lua_pushnil(L)
        lua_rawseti(L, registry, lua_Integer(ctxRef))
        if budget.pointee.env_dirty != 0 {
            budget.pointee.env_dirty = 0
            lua_rawgeti(L, registry, lua_Integer(resetRef))
            if mg_pcall(L, 0, 0, 0) != LUA_OK { broken = true }
            lua_settop(L, 0)
        }
        if budget.pointee.used > usedAtBegin + Self.collectAfter {
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

    /// Whether the script thread has the count hook between runs: always when counting
    /// exactly, never on demand (a run armed by the watchdog loses it when it ends).
    public var hookedBetweenRuns: Bool { lua_gethook(thread) != nil }

    private func discard() {
        broken = true
        mg_budget_end(budget)
    }

    private func describeFailure() -> ScriptFailure {
        let killed = budget.pointee.killed
        let budgetName: String?
        switch killed {
        case MG_KILL_INSTRUCTIONS: budgetName = "instructions"
        case MG_KILL_TIME: budgetName = "time"
        case MG_KILL_MEMORY: budgetName = "memory"
        case MG_KILL_DEPTH: budgetName = "depth"
        case MG_KILL_COROUTINES: budgetName = "coroutines"
        default: budgetName = nil
        }
        mg_budget_end(budget)  // the traceback below allocates
        let message = Lua.string(thread, -1) ?? "(error object is a \(Lua.typeName(thread, -1)) value)"
        var location: String?
        var ar = lua_Debug()
        var level: Int32 = 0
        while lua_getstack(thread, level, &ar) != 0 {
            lua_getinfo(thread, "Sl", &ar)
            let source = String(cString: mg_short_src(&ar))
            // The first frame in a script: not C, not the sandbox's own wrappers.
            if ar.currentline > 0, source != "prelude" {
                location = "\(source):\(ar.currentline)"
                break
            }
            level += 1
        }
        luaL_traceback(L, thread, nil, 0)
        let traceback = Lua.string(L, -1) ?? ""
        lua_settop(L, 0)
        return ScriptFailure(budget: budgetName, message: message, location: location, traceback: traceback)
    }
}

/// `module_source(name)` for the prelude's `require`: the source and chunk name of a module
/// in the scripts directory, or nil and a message.
private let moduleSource: LuaFunction = { L in
    let L = L!
    let state = Lua.owner(L)
    let name = Lua.string(L, 1) ?? ""
    guard let file = state.program.scripts.files[name] else {
        lua_pushnil(L)
        if ScriptSet.moduleName(name.split(separator: ".").joined(separator: "/") + ".lua") == nil {
            Lua.push(L, "module '\(name)' not found: module names are made of names separated by dots, such as lib.util")
            return 2
        }
        let path = name.split(separator: ".").joined(separator: "/")
        Lua.push(L, "module '\(name)' not found: no \(path).lua in \(state.program.scripts.directory)")
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
extension LuaState: Sendable {}
