import Config
/// One event loop's Lua for one generation of scripts: a shared `LuaInterpreter` and the
/// request contexts (`LuaState`, a thread each) lent on it. Contexts are made on demand up to
/// `settings.maxStates` at once; past that, requests wait in line for one to come back.
/// A context whose run failed retires its interpreter: the next request gets a fresh one,
/// and the old one goes once the requests still running on it end.
/// Loop-confined: never touched from another thread.
public final class LuaStatePool {
    public let program: ScriptProgram
    /// Where new contexts are made; nil until the first, or after a retirement.
    private var interpreter: LuaInterpreter?
    /// Idle contexts, all on `interpreter`.
    private var idle: [LuaState] = []
    /// Contexts in existence (idle and lent), on any interpreter.
    public private(set) var count = 0
    private var waiters: [(id: Int, resume: (LuaState) -> Void)] = []
    private var nextWaiterID = 0

    public init(program: ScriptProgram) {
        self.program = program
    }

    /// A context for a request, made if none is idle and the cap allows; nil when all are lent.
    /// `overflow` lets the count go to twice the cap: for a request's later phases, which
    /// cannot wait in line (their context went back after `access`, see `LuaState.ctxIsEmpty`).
    public func checkout(overflow: Bool = false) throws(ScriptError) -> LuaState? {
        dropRetired()
        if let state = idle.popLast() { return state }
        guard count < program.settings.maxStates * (overflow ? 2 : 1) else { return nil }
        let state = LuaState(on: try current())
        count += 1
        return state
    }

    /// The interpreter new contexts go on, made if there is none.
    private func current() throws(ScriptError) -> LuaInterpreter {
        if let interpreter { return interpreter }
        let made = try LuaInterpreter(program: program)
        interpreter = made
        return made
    }

    /// Returns a context; a broken one (or one on a retired interpreter) is dropped, and a
    /// waiting request gets a new one.
    public func release(_ state: LuaState) {
        state.endRequest()
        if state.broken || state.interpreter.retired {
            count -= 1
            dropRetired()
            // A waiter can now have a fresh context made for it.
            if !waiters.isEmpty, let fresh = try? checkout() {
                waiters.removeFirst().resume(fresh)
            }
            return
        }
        if !waiters.isEmpty {
            waiters.removeFirst().resume(state)
        } else {
            idle.append(state)
        }
    }

    /// Lets a retired interpreter go: its idle contexts are dropped, and it is closed once
    /// the contexts still lent on it come back.
    private func dropRetired() {
        guard let interpreter, interpreter.retired else { return }
        count -= idle.count
        idle.removeAll()
        self.interpreter = nil
    }

    /// Queues `resume` to get the next context released; returns an id for `cancel`.
    public func wait(_ resume: @escaping (LuaState) -> Void) -> Int {
        nextWaiterID += 1
        waiters.append((nextWaiterID, resume))
        return nextWaiterID
    }

    /// Leaves the queue (the request timed out or went away).
    public func cancel(_ id: Int) {
        waiters.removeAll { $0.id == id }
    }

    /// The interpreter and contexts this loop holds now.
    public var stats: LuaPoolStats {
        LuaPoolStats(interpreters: interpreter == nil ? 0 : 1, contexts: count, heapBytes: interpreter?.memory ?? 0)
    }
}

/// One loop's Lua, for figures and tests.
public struct LuaPoolStats: Sendable {
    /// Interpreters in use (retired ones still finishing requests are not counted).
    public var interpreters = 0
    /// Request contexts (threads) in existence, idle or lent.
    public var contexts = 0
    /// Heap bytes of the interpreters, live data and garbage not yet collected.
    public var heapBytes = 0

    public init(interpreters: Int = 0, contexts: Int = 0, heapBytes: Int = 0) {
        self.interpreters = interpreters
        self.contexts = contexts
        self.heapBytes = heapBytes
    }

    public static func + (a: LuaPoolStats, b: LuaPoolStats) -> LuaPoolStats {
        LuaPoolStats(interpreters: a.interpreters + b.interpreters, contexts: a.contexts + b.contexts, heapBytes: a.heapBytes + b.heapBytes)
    }
}

@available(*, unavailable)
extension LuaStatePool: Sendable {}
