import Config
import Scripting
import Testing

/// Each class of hostile script ends its own request with a failure naming the budget or
/// error, and the next request on a fresh state is served normally.
@Suite struct SandboxTests {
    /// A policy whose access phase runs `body`, then reports "after".
    func failure(_ body: String, budget: ScriptBudget = ScriptBudget(), sourceLocation: SourceLocation = #_sourceLocation) throws -> ScriptFailure {
        let p = program(["policy": "return { access = function(ctx)\nif probe.mode() == 'ok' then probe.put('ok') return end\n\(body)\nprobe.put('after') end }"])
        let pool = LuaStatePool(program: p)
        let state = try #require(try pool.checkout())
        let recorder = Recorder()
        let result = runRequest(state, recorder, budget: budget)
        let failure = try #require(result.failure, "expected the script to fail", sourceLocation: sourceLocation)
        #expect(recorder.values.isEmpty, "the script went on after its failure", sourceLocation: sourceLocation)
        #expect(state.broken, sourceLocation: sourceLocation)
        pool.release(state)
        #expect(pool.count == 0, sourceLocation: sourceLocation)
        // The pool makes a fresh state, at its usual footprint, and serves the next request.
        let next = try #require(try pool.checkout())
        #expect(next.memory < 256 * 1024, sourceLocation: sourceLocation)
        let ok = Recorder()
        ok.mode = "ok"
        #expect(runRequest(next, ok).isDone, sourceLocation: sourceLocation)
        #expect(ok.values == ["ok"], sourceLocation: sourceLocation)
        return failure
    }

    @Test func infiniteLoop() throws {
        let f = try failure("while true do end")
        #expect(f.budget == "instructions")
        #expect(f.location == "t/policy.lua:3")
    }

    @Test func wallClockBudget() throws {
        var budget = ScriptBudget()
        budget.instructions = 1_000_000_000_000
        budget.time = .milliseconds(20)
        let start = ContinuousClock.now
        let f = try failure("while true do end", budget: budget)
        #expect(f.budget == "time")
        #expect(ContinuousClock.now - start < .seconds(1))
    }

    @Test func budgetErrorsCannotBeCaught() throws {
        let f = try failure("""
            for i = 1, 1e9 do
              pcall(function() while true do end end)
              xpcall(function() while true do end end, function() while true do end end)
              coroutine.resume(coroutine.create(function() while true do end end))
            end
            """)
        #expect(f.budget == "instructions")
    }

    @Test func pathologicalPatterns() throws {
        let f1 = try failure(#"string.find(string.rep("a", 50000), "(.-)(.-)(.-)(.-)b")"#)
        #expect(f1.budget == "instructions")
        let f2 = try failure(#"string.find(string.rep("(", 200000), "%b()")"#)
        #expect(f2.budget == "instructions")
        let f3 = try failure(#"for _ in string.gmatch(string.rep("a", 100000), "a*a*a*a*b") do end"#)
        #expect(f3.budget == "instructions")
    }

    @Test func bulkLibraryFunctions() throws {
        #expect(try failure(#"string.rep("x", 1e9)"#).budget != nil)
        #expect(try failure(#"table.move({}, 1, 1e15, 1, {})"#).budget == "instructions")
        #expect(try failure(#"table.concat({}, "", 1, 1e12)"#).budget != nil)
        #expect(try failure(#"table.unpack({}, 1, 1e8)"#).budget != nil)
        // n copies of "" used to loop n times: now it is free, and the script goes on.
        let p = program(["policy": #"return { access = function() probe.put(#string.rep("", 1e15)) end }"#])
        let state = try LuaState(program: p)
        let r = Recorder()
        #expect(runRequest(state, r).isDone)
        #expect(r.values == ["0"])
    }

    @Test func memoryBombs() throws {
        var budget = ScriptBudget()
        budget.instructions = 1_000_000_000
        #expect(try failure("local t = {} for i = 1, 1e9 do t[i] = i end", budget: budget).budget == "memory")
        #expect(try failure(#"local s = "x" for i = 1, 40 do s = s .. s end"#, budget: budget).budget == "memory")
        #expect(try failure(#"local t = {} for i = 1, 1e9 do t[#t+1] = tostring(i) .. "padding" end"#, budget: budget).budget == "memory")
        // Caught memory errors still end the request.
        #expect(try failure(#"while true do pcall(function() local t = {} for i = 1, 1e9 do t[i] = i end end) end"#, budget: budget).budget == "memory")
    }

    @Test func deepRecursion() throws {
        #expect(try failure("local function f(n) return 1 + f(n + 1) end f(1)").budget == "depth")
        // Recursion through metamethods hits Lua's own C-stack limit: an error, same outcome.
        _ = try failure("local t = setmetatable({}, {}) getmetatable(t).__index = function(t, k) return t[k .. 'x'] end local _ = t.a")
    }

    @Test func coroutineAbuse() throws {
        #expect(try failure("for i = 1, 1000 do coroutine.create(function() end) end").budget == "coroutines")
        #expect(try failure("local function spawn() return coroutine.wrap(function() spawn()() end) end spawn()()").budget != nil)
    }

    @Test func finalizersAreRefused() throws {
        let f = try failure("setmetatable({}, {__gc = function() while true do end end})")
        #expect(f.budget == nil)
        #expect(f.message.contains("__gc metamethods are not allowed"))
    }

    @Test func unsafeFunctionsAreAbsent() throws {
        let p = program(["policy": """
            return { access = function()
              for _, name in ipairs{"io", "debug", "package", "dofile", "loadfile", "collectgarbage", "_G", "__api", "__killed", "__charge"} do
                probe.put(name .. "=" .. type(_ENV[name]))
              end
              probe.put("os.execute=" .. type(os.execute))
              probe.put("os.exit=" .. type(os.exit))
              probe.put("os.getenv=" .. type(os.getenv))
              probe.put("os.remove=" .. type(os.remove))
              probe.put("string.dump=" .. type(string.dump))
              probe.put("binary=" .. tostring(load("\\27Lua", "x", "b")))
              probe.put("binary2=" .. tostring(load("\\27LuaT\\0")))
              probe.put("os.time=" .. type(os.time()))
            end }
            """])
        let state = try LuaState(program: p)
        let r = Recorder()
        let result = runRequest(state, r)
        #expect(result.isDone, "\(String(describing: result.failure))")
        #expect(r.values == [
            "io=nil", "debug=nil", "package=nil", "dofile=nil", "loadfile=nil", "collectgarbage=nil", "_G=nil", "__api=nil",
            "__killed=nil", "__charge=nil", "os.execute=nil", "os.exit=nil", "os.getenv=nil", "os.remove=nil",
            "string.dump=nil", "binary=nil", "binary2=nil", "os.time=number",
        ])
    }

    /// Shared tables are read-only: one script cannot change what another (or the next
    /// request) gets from `string`, `table`, the string metatable or an API module.
    @Test func sharedTablesAreReadOnly() throws {
        for attack in [
            "string.upper = function() return 'pwned' end",
            "rawset(string, 'upper', function() return 'pwned' end)",
            "getmetatable('').__index = {upper = function() return 'pwned' end}",
            "setmetatable(string, {__index = function() return 'pwned' end})",
            "table.insert = nil",
            "probe.put = nil",
            "math.pi = 3",
        ] {
            let f = try failure(attack)
            #expect(f.budget == nil, "\(attack)")
        }
        let p = program(["policy": "return { access = function() probe.put(('x'):upper()) probe.put(tostring(getmetatable(''))) end }"])
        let r = Recorder()
        #expect(runRequest(try LuaState(program: p), r).isDone)
        #expect(r.values == ["X", "false"])
    }

    @Test func loadRunsTextInItsOwnEnvironment() throws {
        let p = program(["policy": """
            secret = 1
            return { access = function()
              local f = load("x = 42 return secret, string.upper('a')")
              probe.put(tostring(f()))
              probe.put(select(2, f()))
              probe.put(tostring(x))
            end }
            """])
        let r = Recorder()
        let result = runRequest(try LuaState(program: p), r)
        #expect(result.isDone, "\(String(describing: result.failure))")
        #expect(r.values == ["nil", "A", "nil"])
    }

    @Test func yieldOutsideACoroutineFails() throws {
        let f = try failure("coroutine.yield(1)")
        #expect(f.message.contains("outside a coroutine"))
    }

    @Test func coroutinesWork() throws {
        let p = program(["policy": """
            return { access = function()
              local gen = coroutine.wrap(function() for i = 1, 3 do coroutine.yield(i) end end)
              probe.put(gen() + gen() + gen())
              local co = coroutine.create(function(a) local b = coroutine.yield(a + 1) error("boom " .. b) end)
              local ok, v = coroutine.resume(co, 1)
              probe.put(tostring(ok) .. v)
              local ok2, err = coroutine.resume(co, 5)
              probe.put(tostring(ok2) .. " " .. err)
              probe.put(tostring(pcall(error, "caught")))
            end }
            """])
        let r = Recorder()
        let result = runRequest(try LuaState(program: p), r)
        #expect(result.isDone, "\(String(describing: result.failure))")
        #expect(r.values == ["6", "true2", "false t/policy.lua:4: boom 5", "false"])
    }
}
