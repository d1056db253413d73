import CLuaRuntime
import Config

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

/// One request's Lua context: a thread (coroutine) of a shared `LuaInterpreter` where the
/// request's phases run, with its own `ctx`, budget and request globals. Owned by one event
/// loop's pool and lent to one request at a time. While the request waits (an API call, a
/// body) other requests run on the same interpreter: the budget's request part and the
/// globals the request assigned are put aside until its next turn. A context whose run
/// failed (an error, a budget) is `broken`: it is dropped and its interpreter retired.
public final class LuaState {
    public let interpreter: LuaInterpreter
    /// The interpreter's main state (not this context's thread).
    public var L: OpaquePointer { interpreter.L }
    public var program: ScriptProgram { interpreter.program }
    private var budget: UnsafeMutablePointer<mg_budget> { interpreter.budget }
    /// The coroutine phases run in, reused while runs end cleanly.
    private let thread: OpaquePointer
    private var threadRef: Int32 = LUA_NOREF
    private var ctxRef: Int32 = LUA_NOREF
    /// The request part of the budget while a phase waits.
    private var saved = mg_run_budget()
    /// Request globals put aside between turns (`LuaInterpreter.stashGlobals`).
    private var globalsRef: Int32 = LUA_NOREF
    public private(set) var broken = false
    /// A phase is suspended in a wait; it must be resumed or abandoned before anything else runs.
    public private(set) var suspended = false
    /// Lines the current request has logged (see `BuiltinModules.maxLinesPerRequest`).
    var logLines = 0
    /// What the last `route` phase returned, if a string (a route name).
    public private(set) var routeResult: String?
    private var capturing = false
    private var resultsReader: ((OpaquePointer, Int32) -> Void)?
    /// The request being served, for modules that need more than `Lua.current` (logging).
    public private(set) var host: ScriptHost?
    /// Heap bytes when the current request began.
    private var usedAtBegin = 0

    /// A context on a new interpreter of its own, loading every policy of `program`.
    public convenience init(program: ScriptProgram) throws(ScriptError) {
        self.init(on: try LuaInterpreter(program: program))
    }

    /// A context on `interpreter`.
    public init(on interpreter: LuaInterpreter) {
        self.interpreter = interpreter
        let L = interpreter.L
        thread = lua_newthread(L)!
        threadRef = luaL_ref(L, mg_registry_index())  // keeps the thread alive
        if interpreter.budget.pointee.watched != 0 { mg_watch_thread(thread) }
        lua_createtable(L, 0, 0)
        ctxRef = luaL_ref(L, mg_registry_index())
    }

    deinit {
        let registry = mg_registry_index()
        luaL_unref(L, registry, threadRef)
        luaL_unref(L, registry, ctxRef)
        if globalsRef != LUA_NOREF { luaL_unref(L, registry, globalsRef) }
    }

    /// Heap bytes right after loading: the interpreter's own footprint.
    public var footprint: Int { interpreter.footprint }

    /// What each of the program's prelude extensions returned.
    public var extensionRefs: [Int32] { interpreter.extensionRefs }

    /// Requires `module` under the load budget and lets `body` read what it returned.
    public func inspect<T>(module: String, _ body: (OpaquePointer) throws(ScriptError) -> T) throws(ScriptError) -> T {
        try interpreter.inspect(module: module, body)
    }

    /// Loads (requires) a module of the program's scripts under the load budget.
    public func load(module: String) throws(ScriptError) {
        defer { if interpreter.retired { broken = true } }
        try interpreter.load(module: module)
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
        enter()
        interpreter.begin(b)
        budget.pointee.current = current
        lua_rawgeti(thread, mg_registry_index(), lua_Integer(interpreter.extensionRefs[index]))
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
        interpreter.has(phase, policy: policy)
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

    /// Whether the request's `ctx` holds nothing: its later phases can then run on any context.
    public func ctxIsEmpty() -> Bool {
        lua_rawgeti(L, mg_registry_index(), lua_Integer(ctxRef))
        lua_pushnil(L)
        let empty = lua_next(L, -2) == 0
        lua_settop(L, 0)
        return empty
    }

    /// Runs `phase` of `policy` with `ctx`; `current` is what API functions get from `Lua.current`.
    public func run(_ phase: Phase, policy: Int, budget b: ScriptBudget, current: UnsafeMutableRawPointer) -> RunResult {
        let ref = interpreter.phase(phase, policy: policy)
        guard ref != LUA_NOREF else { return .done }
        if suspended { abandon() }
        capturing = phase == .route
        routeResult = nil
        enter()
        interpreter.begin(b)
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
        enter()
        mg_budget_restore(budget, &saved, mg_now_ns())
        let limit = budget.pointee.limit
        if limit != UInt.max { budget.pointee.limit = limit + budget.pointee.slack }
        let count = push(thread)
        budget.pointee.limit = limit
        return resume(arguments: count)
    }

    /// Makes this context the interpreter's running one, with its request globals in place.
    private func enter() {
        interpreter.active = self
        if globalsRef != LUA_NOREF {
            interpreter.unstashGlobals(globalsRef)
            globalsRef = LUA_NOREF
        }
    }

    /// Ends a turn: the request globals it assigned are put aside, so the next request to
    /// run on the interpreter does not see them.
    private func leave() {
        interpreter.active = nil
        globalsRef = interpreter.stashGlobals()
    }

    private func resume(arguments: Int32) -> RunResult {
        var results: Int32 = 0
        suspended = false
        let started = mg_now_ns()
        let status = mg_resume(thread, L, arguments, &results, started)
        let now = mg_now_ns()
        host?.scriptRan(nanoseconds: now &- started)
        if status == LUA_OK {
            if capturing, results >= 1 { routeResult = Lua.string(thread, -results) }
            resultsReader?(thread, results)
            lua_settop(thread, 0)
            mg_budget_end(budget)
            leave()
            return .done
        }
        if status == LUA_YIELD {
            if results >= 1, lua_touserdata(thread, -results) == mg_yield_sentinel() {
                mg_budget_save(budget, &saved, now)
                suspended = true
                leave()
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
        enter()
        mg_budget_restore(budget, &saved, mg_now_ns())
        let status = mg_reset_thread(thread)
        mg_budget_end(budget)
        leave()
        if status != LUA_OK { discard() }
    }

    /// Ends a request: drops `ctx` and the request globals it assigned, and collects garbage
    /// once the heap has grown.
    public func endRequest() {
        if suspended { abandon() }
        host = nil
        guard !broken else { return }
        let registry = mg_registry_index()
        lua_pushnil(L)
        lua_rawseti(L, registry, lua_Integer(ctxRef))
        if globalsRef != LUA_NOREF {
            luaL_unref(L, registry, globalsRef)
            globalsRef = LUA_NOREF
        }
        interpreter.collect(usedAtBegin: usedAtBegin)
        if interpreter.retired { broken = true }
    }

    /// Heap bytes of the interpreter in use now.
    public var memory: Int { budget.pointee.used }

    /// Whether the script thread has the count hook between runs: always when counting
    /// exactly, never on demand (a run armed by the watchdog loses it when it ends).
    public var hookedBetweenRuns: Bool { lua_gethook(thread) != nil }

    /// The run failed: this context is not used again, and no request starts on its
    /// interpreter again (what the failure left in module state stays with the runs already there).
    private func discard() {
        broken = true
        interpreter.retired = true
        mg_budget_end(budget)
        if interpreter.active === self { leave() }
        if globalsRef != LUA_NOREF {
            luaL_unref(L, mg_registry_index(), globalsRef)
            globalsRef = LUA_NOREF
        }
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

@available(*, unavailable)
extension LuaState: Sendable {}
