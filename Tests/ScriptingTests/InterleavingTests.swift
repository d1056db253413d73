import CLuaRuntime
import Config
import Foundation
import Scripting
import Testing

/// Requests take turns on one interpreter per pool: while one waits (on Redis, a body), the
/// next runs on its own thread of the same interpreter, with its own ctx, globals and budget.
@Suite struct InterleavingTests {
    /// Begins a request on a context of `pool` and runs its access phase.
    func start(_ pool: LuaStatePool, _ recorder: Recorder, budget: ScriptBudget = ScriptBudget()) throws -> (LuaState, RunResult) {
        let state = try #require(try pool.checkout())
        state.beginRequest(host: recorder)
        return (state, state.run(.access, policy: 0, budget: budget, current: Unmanaged.passUnretained(recorder).toOpaque()))
    }

    func resume(_ state: LuaState, with value: Int) -> RunResult {
        state.resume { L in
            lua_pushinteger(L, lua_Integer(value))
            return 1
        }
    }

    @Test func waitingRequestsShareOneInterpreterAndKeepTheirOwnCtx() throws {
        let p = program(
            ["policy": "return { access = function(ctx)\nctx.n = probe.mode()\nlocal v = probe.wait()\nprobe.put(ctx.n .. ':' .. v) end }"],
            maxStates: 100)
        let pool = LuaStatePool(program: p)
        var waiting: [(LuaState, Recorder)] = []
        var heapAtFirst = 0
        for i in 0..<50 {
            let r = Recorder()
            r.mode = "r\(i)"
            let (state, result) = try start(pool, r)
            guard case .waiting = result else {
                Issue.record("request \(i) did not wait: \(result)")
                return
            }
            if i == 0 { heapAtFirst = state.memory }
            waiting.append((state, r))
        }
        #expect(pool.stats.interpreters == 1)
        #expect(pool.stats.contexts == 50)
        #expect(Set(waiting.map { ObjectIdentifier($0.0.interpreter) }).count == 1)
        // A waiting request costs its thread and ctx, not an interpreter (about 130 KB).
        let perRequest = (waiting[49].0.memory - heapAtFirst) / 49
        #expect(perRequest < 4096, "\(perRequest) bytes per waiting request")
        for (i, (state, r)) in waiting.enumerated().reversed() {
            #expect(resume(state, with: i * 10).isDone)
            #expect(r.values == ["r\(i):\(i * 10)"])
            pool.release(state)
        }
        #expect(pool.stats.contexts == 50, "contexts are kept for the next requests")
    }

    /// A global one request assigns is its own across its turns, and no other request sees it.
    @Test func requestGlobalsStayWithTheirRequestAcrossTurns() throws {
        let p = program(
            ["policy": """
                return { access = function(ctx)
                  probe.put(tostring(who))
                  who = probe.mode()
                  probe.wait()
                  probe.put(tostring(who))
                end }
                """], maxStates: 10)
        let pool = LuaStatePool(program: p)
        let a = Recorder(), b = Recorder()
        a.mode = "a"
        b.mode = "b"
        let (sa, ra) = try start(pool, a)
        let (sb, rb) = try start(pool, b)
        guard case .waiting = ra, case .waiting = rb else {
            Issue.record("expected both to wait: \(ra) \(rb)")
            return
        }
        #expect(a.values == ["nil"])
        #expect(b.values == ["nil"], "b does not see the global a set before its wait")
        #expect(resume(sa, with: 0).isDone)
        #expect(a.values == ["nil", "a"])
        pool.release(sa)
        let c = Recorder()
        c.mode = "c"
        let (sc, rc) = try start(pool, c)
        guard case .waiting = rc else { return }
        #expect(c.values == ["nil"])
        #expect(resume(sb, with: 0).isDone)
        #expect(b.values == ["nil", "b"])
        #expect(resume(sc, with: 0).isDone)
        #expect(c.values == ["nil", "c"])
        pool.release(sb)
        pool.release(sc)
    }

    /// Each request's budgets are its own: what others run or allocate between its turns
    /// neither counts against it nor lets it exceed its own.
    @Test func budgetsAreEachRequestsOwnAcrossTurns() throws {
        var budget = ScriptBudget()
        budget.instructions = 1_000_000
        budget.memory = 1024 * 1024
        let p = program(
            ["policy": """
                local keep = {}
                return { access = function(ctx)
                  local mode = probe.mode()
                  if mode == 'cpu' then
                    for i = 1, 600000 do end
                    probe.wait()
                    for i = 1, 600000 do end
                  elseif mode == 'mem' then
                    local t = {}
                    for i = 1, 20000 do t[i] = i end
                    probe.wait()
                    local u = {}
                    for i = 1, 20000 do u[i] = i end
                    ctx.keep = {t, u}
                  end
                  probe.put('end')
                end }
                """], budget: budget, maxStates: 10)
        let pool = LuaStatePool(program: p)
        // cpu: 60% of the instruction budget before its wait and 60% after: stopped, even though
        // another request began (and reset the counters) in between.
        let a = Recorder(), b = Recorder()
        a.mode = "cpu"
        b.mode = "cpu"
        let (sa, _) = try start(pool, a, budget: budget)
        let (sb, _) = try start(pool, b, budget: budget)
        let failed = resume(sa, with: 0).failure
        #expect(failed?.budget == "instructions")
        #expect(sb.interpreter.retired, "a failure retires the interpreter")
        // b was already running there: it finishes on it.
        #expect(resume(sb, with: 0).failure?.budget == "instructions")
        pool.release(sa)
        pool.release(sb)

        // mem: 512 KB (of 1 MB) before the wait and as much after: stopped. The second request,
        // begun while the first holds its 512 KB, is not charged for them in its first turn.
        let c = Recorder(), d = Recorder()
        c.mode = "mem"
        d.mode = "mem"
        let (sc, rc) = try start(pool, c, budget: budget)
        #expect(!sc.interpreter.retired, "the pool made a fresh interpreter")
        guard case .waiting = rc else {
            Issue.record("c did not wait: \(rc)")
            return
        }
        let (sd, rd) = try start(pool, d, budget: budget)
        guard case .waiting = rd else {
            Issue.record("d did not get through its first turn: \(rd)")
            return
        }
        #expect(resume(sc, with: 0).failure?.budget == "memory")
        #expect(resume(sd, with: 0).failure?.budget == "memory")
        pool.release(sc)
        pool.release(sd)
    }

    /// Time spent waiting is not the script's: its time budget counts only its turns.
    @Test func waitsDoNotCountAgainstTheTimeBudget() throws {
        var budget = ScriptBudget()
        budget.time = .milliseconds(30)
        let p = program(["policy": "return { access = function(ctx) probe.wait() for i = 1, 5000 do end probe.put('end') end }"], budget: budget, maxStates: 10)
        let pool = LuaStatePool(program: p)
        let a = Recorder()
        let (sa, _) = try start(pool, a, budget: budget)
        // Another request runs meanwhile, with its own (fresh) deadline.
        let b = Recorder()
        let (sb, _) = try start(pool, b, budget: budget)
        Thread.sleep(forTimeInterval: 0.06)
        #expect(resume(sa, with: 0).isDone)
        #expect(resume(sb, with: 0).isDone)
        #expect(a.values == ["end"] && b.values == ["end"])
    }

    /// A failure retires the interpreter for new requests, while the requests already waiting
    /// on it finish there; it is closed once the last of them ends.
    @Test func aRetiredInterpreterServesItsWaitingRequestsThenGoes() throws {
        let p = program(
            ["policy": "return { access = function(ctx)\nif probe.mode() == 'fail' then error('boom') end\nlocal v = probe.wait()\nprobe.put(v) end }"],
            maxStates: 10)
        let pool = LuaStatePool(program: p)
        let a = Recorder()
        var sa: LuaState?
        do {
            let (started, ra) = try start(pool, a)
            guard case .waiting = ra else { return }
            sa = started
        }
        weak let first = sa!.interpreter
        let bad = Recorder()
        bad.mode = "fail"
        do {
            let (sb, rb) = try start(pool, bad)
            #expect(rb.failure?.message.contains("boom") == true)
            #expect(sb.broken)
            pool.release(sb)
        }
        // A new request goes to a fresh interpreter.
        let c = Recorder()
        let (sc, rc) = try start(pool, c)
        guard case .waiting = rc else { return }
        #expect(sc.interpreter !== first)
        #expect(resume(sa!, with: 7).isDone)
        #expect(a.values == ["7"])
        pool.release(sa!)
        sa = nil
        #expect(first == nil, "the retired interpreter is closed after its last request")
        #expect(resume(sc, with: 8).isDone)
        pool.release(sc)
        #expect(pool.stats.interpreters == 1 && pool.stats.contexts == 1)
    }
}
