import Config
/// One event loop's Lua states for one generation of scripts. States are made on demand up
/// to `settings.maxStates`; past that, requests wait in line for one to come back.
/// Loop-confined: never touched from another thread.
public final class LuaStatePool {
    public let program: ScriptProgram
    private var idle: [LuaState] = []
    /// States in existence (idle and lent).
    public private(set) var count = 0
    private var waiters: [(id: Int, resume: (LuaState) -> Void)] = []
    private var nextWaiterID = 0

    public init(program: ScriptProgram) {
        self.program = program
    }

    /// A state for a request, made if none is idle and the cap allows; nil when all are lent.
    /// `overflow` lets the count go to twice the cap: for a request's later phases, which
    /// cannot wait in line (their state went back after `access`, see `LuaState.ctxIsEmpty`).
    public func checkout(overflow: Bool = false) throws(ScriptError) -> LuaState? {
        if let state = idle.popLast() { return state }
        guard count < program.settings.maxStates * (overflow ? 2 : 1) else { return nil }
        let state = try LuaState(program: program)
        count += 1
        return state
    }

    /// Returns a state; a broken one is closed and a waiting request gets a new one later.
    public func release(_ state: LuaState) {
        state.endRequest()
        if state.broken {
            count -= 1
            // A waiter can now have a fresh state made for it.
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

    /// Queues `resume` to get the next state released; returns an id for `cancel`.
    public func wait(_ resume: @escaping (LuaState) -> Void) -> Int {
        nextWaiterID += 1
        waiters.append((nextWaiterID, resume))
        return nextWaiterID
    }

    /// Leaves the queue (the request timed out or went away).
    public func cancel(_ id: Int) {
        waiters.removeAll { $0.id == id }
    }

    /// Heap bytes of the idle states.
    public var idleMemory: Int { idle.reduce(0) { $0 + $1.memory } }
}

@available(*, unavailable)
extension LuaStatePool: Sendable {}
