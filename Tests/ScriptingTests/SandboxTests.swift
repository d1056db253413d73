import Config
import Scripting
import Testing

/// Each class of hostile script ends its own request with a failure naming the budget or
/// error, and the next request on a fresh state is served normally.
@Suite struct SandboxTests {
    /// A policy whose access phase runs `body`, then reports "after".
    func failure(
        _ body: String, budget: ScriptBudget = ScriptBudget(), counting: InstructionCounting = .exact, sourceLocation: SourceLocation = #_sourceLocation
    ) throws -> ScriptFailure {
        let p = program(
            ["policy": "return { access = function(ctx)\nif probe.mode() == 'ok' then probe.put('ok') return end\n\(body)\nprobe.put('after') end }"],
            counting: counting)
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

    func failure(
        _ counting: InstructionCounting, _ body: String, budget: ScriptBudget = ScriptBudget(), sourceLocation: SourceLocation = #_sourceLocation
    ) throws -> ScriptFailure {
        try failure(body, budget: budget, counting: counting, sourceLocation: sourceLocation)
    }

    @Test(arguments: InstructionCounting.allCases) func infiniteLoop(_ counting: InstructionCounting) throws {
        let f = try failure(counting, "while true do end")
        #expect(f.budget == "instructions")
        #expect(f.location == "t/policy.lua:3")
    }

    @Test(arguments: InstructionCounting.allCases) func wallClockBudget(_ counting: InstructionCounting) throws {
        var budget = ScriptBudget()
        budget.instructions = 1_000_000_000_000
        budget.time = .milliseconds(20)
        let start = ContinuousClock.now
        let f = try failure(counting, "while true do end", budget: budget)
        #expect(f.budget == "time")
        #expect(ContinuousClock.now - start < .seconds(1))
    }

    @Test(arguments: InstructionCounting.allCases) func budgetErrorsCannotBeCaught(_ counting: InstructionCounting) throws {
        let f = try failure(counting, """
            for i = 1, 1e9 do
              pcall(function() while true do end end)
              xpcall(function() while true do end end, function() while true do end end)
              coroutine.resume(coroutine.create(function() while true do end end))
            end
            """)
        #expect(f.budget == "instructions")
    }

    @Test(arguments: InstructionCounting.allCases) func pathologicalPatterns(_ counting: InstructionCounting) throws {
        let f1 = try failure(counting, #"string.find(string.rep("a", 50000), "(.-)(.-)(.-)(.-)b")"#)
        #expect(f1.budget == "instructions")
        let f2 = try failure(counting, #"string.find(string.rep("(", 200000), "%b()")"#)
        #expect(f2.budget == "instructions")
        let f3 = try failure(counting, #"for _ in string.gmatch(string.rep("a", 100000), "a*a*a*a*b") do end"#)
        #expect(f3.budget == "instructions")
    }

    @Test(arguments: InstructionCounting.allCases) func bulkLibraryFunctions(_ counting: InstructionCounting) throws {
        #expect(try failure(counting, #"string.rep("x", 1e9)"#).budget != nil)
        #expect(try failure(counting, #"table.move({}, 1, 1e15, 1, {})"#).budget == "instructions")
        #expect(try failure(counting, #"table.concat({}, "", 1, 1e12)"#).budget != nil)
        #expect(try failure(counting, #"table.unpack({}, 1, 1e8)"#).budget != nil)
        // n copies of "" used to loop n times: now it is free, and the script goes on.
        let p = program(["policy": #"return { access = function() probe.put(#string.rep("", 1e15)) end }"#])
        let state = try LuaState(program: p)
        let r = Recorder()
        #expect(runRequest(state, r).isDone)
        #expect(r.values == ["0"])
    }

    @Test(arguments: InstructionCounting.allCases) func memoryBombs(_ counting: InstructionCounting) throws {
        var budget = ScriptBudget()
        budget.instructions = 1_000_000_000
        budget.time = .seconds(10)  // the memory budget is what must stop these, even on a loaded machine
        #expect(try failure(counting, "local t = {} for i = 1, 1e9 do t[i] = i end", budget: budget).budget == "memory")
        #expect(try failure(counting, #"local s = "x" for i = 1, 40 do s = s .. s end"#, budget: budget).budget == "memory")
        let padded = try failure(counting, #"local t = {} for i = 1, 1e9 do t[#t+1] = tostring(i) .. "padding" end"#, budget: budget)
        #expect(padded.budget == "memory", "\(padded)")
        // Caught memory errors still end the request.
        #expect(try failure(counting, #"while true do pcall(function() local t = {} for i = 1, 1e9 do t[i] = i end end) end"#, budget: budget).budget == "memory")
    }

    @Test(arguments: InstructionCounting.allCases) func deepRecursion(_ counting: InstructionCounting) throws {
        let deep = try failure(counting, "local function f(n) return 1 + f(n + 1) end f(1)")
        if counting == .exact {
            #expect(deep.budget == "depth")
        } else {
            // Before the watchdog arms the hook the stack grows unchecked: the time charged on
            // arming, the memory budget or Lua's own stack limit may end it first.
            #expect(deep.budget != nil || deep.message.contains("stack overflow"), "\(deep.message)")
        }
        // Recursion through metamethods hits Lua's own C-stack limit: an error, same outcome.
        _ = try failure(counting, "local t = setmetatable({}, {}) getmetatable(t).__index = function(t, k) return t[k .. 'x'] end local _ = t.a")
    }

    @Test(arguments: InstructionCounting.allCases) func coroutineAbuse(_ counting: InstructionCounting) throws {
        #expect(try failure(counting, "for i = 1, 1000 do coroutine.create(function() end) end").budget == "coroutines")
        #expect(try failure(counting, "local function spawn() return coroutine.wrap(function() spawn()() end) end spawn()()").budget != nil)
    }

    @Test(arguments: InstructionCounting.allCases) func finalizersAreRefused(_ counting: InstructionCounting) throws {
        let f = try failure(counting, "setmetatable({}, {__gc = function() while true do end end})")
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
            "io=nil", "debug=nil", "package=nil", "dofile=nil", "loadfile=nil", "collectgarbage=nil", "_G=table", "__api=nil",
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

    // MARK: escapes an outside review found

    /// The handler ran where the error was raised; from the count hook, hooks are off there.
    @Test(arguments: InstructionCounting.allCases) func xpcallHandlerRunsUnderTheBudget(_ counting: InstructionCounting) throws {
        let f = try failure(counting, "xpcall(function() error('x') end, function() while true do end end)")
        #expect(f.budget == "instructions")
        #expect(f.location == "t/policy.lua:3")
        var budget = ScriptBudget()
        budget.instructions = 1_000_000_000_000
        budget.time = .milliseconds(30)
        let start = ContinuousClock.now
        let timed = try failure(counting, "xpcall(function() error('x') end, function() while true do end end)", budget: budget)
        #expect(timed.budget == "time")
        #expect(ContinuousClock.now - start < .seconds(1))
    }

    /// A budget error never hands control to script code: not to a handler, not to a
    /// `__close` handler met while it unwinds.
    @Test(arguments: InstructionCounting.allCases) func budgetErrorsRunNoScriptCode(_ counting: InstructionCounting) throws {
        let f = try failure(counting, """
            local t = setmetatable({}, {__close = function() probe.put('closed') while true do end end})
            xpcall(function() local c <close> = t while true do end end, function() probe.put('handler') while true do end end)
            """)
        #expect(f.budget == "instructions")
        #expect(f.location == "t/policy.lua:4")
        #expect(f.message.hasPrefix("t/policy.lua:4: cpu budget exceeded"), "\(f.message)")
    }

    @Test func xpcallKeepsItsResults() throws {
        let p = program(["policy": """
            return { access = function()
              probe.put(select(2, xpcall(function() error({code = 7}) end, function(e) return e.code * 6 end)))
              probe.put(table.concat({tostring(xpcall(function(a, b) return a + b end, print, 1, 2))}, " "))
              probe.put(select(2, xpcall(error, function(e) error("again") end, "first")))
              probe.put(select(2, pcall(xpcall, function() end)))
            end }
            """])
        let r = Recorder()
        let result = runRequest(try LuaState(program: p), r)
        #expect(result.isDone, "\(String(describing: result.failure))")
        #expect(r.values == ["42", "true", "error in error handling", "bad argument #2 to 'xpcall' (function expected, got no value)"])
    }

    /// A plain search over a large subject is charged before it runs: the budget stops it at
    /// its own line, not at the next charged call.
    @Test(arguments: InstructionCounting.allCases) func plainSearchIsCharged(_ counting: InstructionCounting) throws {
        var budget = ScriptBudget()
        budget.instructions = 1_000_000_000_000
        // Long enough that building the 4 MB subject (line 3) fits in it on a loaded machine.
        budget.time = .milliseconds(200)
        budget.memory = 64 * 1024 * 1024
        let start = ContinuousClock.now
        let f = try failure(counting, """
            local s, p = string.rep("a", 1 << 22), string.rep("a", 1 << 12) .. "b"
            for i = 1, 1e9 do string.find(s, p, 1, true) end
            """, budget: budget)
        #expect(f.budget == "time")
        #expect(f.location == "t/policy.lua:4", "\(f.message)")
        #expect(ContinuousClock.now - start < .seconds(1))
        var steps = ScriptBudget()
        steps.instructions = 50_000_000
        // What is checked is the instruction charge; the time budget only has to outlast a
        // debug build on a loaded machine (10 s ran out once in the full suite).
        steps.time = .seconds(60)
        steps.memory = 64 * 1024 * 1024
        let g = try failure(counting, """
            local s, p = string.rep("a", 1 << 22), string.rep("a", 1 << 12)
            for i = 1, 1e9 do string.find(s, p .. "b") end
            """, budget: steps)
        #expect(g.budget == "instructions")
        #expect(g.location == "t/policy.lua:4", "\(g.message)")
    }

    /// Library functions that loop in C are charged, so a loop of them is stopped in time.
    @Test(arguments: InstructionCounting.allCases) func bulkStringAndTableFunctionsAreCharged(_ counting: InstructionCounting) throws {
        var budget = ScriptBudget()
        budget.instructions = 1_000_000_000_000
        budget.time = .milliseconds(50)
        budget.memory = 64 * 1024 * 1024
        for attack in [
            "local s = string.rep('a', 1 << 22) for i = 1, 1e9 do local _ = s:upper() end",
            "local s = string.rep('a', 1 << 22) for i = 1, 1e9 do local _ = s:sub(2) end",
            "local s = string.rep('a', 1 << 16) for i = 1, 1e9 do local _ = s:byte(1, -1) end",
            "local t = {} for i = 1, 1e6 do t[i] = i end for i = 1, 1e9 do table.insert(t, 1, i) table.remove(t, 1) end",
            "local s = string.rep('a', 1 << 22) for i = 1, 1e9 do local _ = utf8.len(s) end",
            "local f = string.rep('%c', 1 << 15) for i = 1, 1e9 do local _ = os.date(f) end",
        ] {
            let start = ContinuousClock.now
            let f = try failure(counting, attack, budget: budget)
            #expect(f.budget == "time", "\(attack)")
            #expect(ContinuousClock.now - start < .milliseconds(400), "\(attack)")
        }
    }

    /// Each state is seeded from the system's random source and no script can reseed it.
    @Test func randomSeedIsTheSystemsAndFixed() throws {
        let f = try failure("math.randomseed(42)")
        #expect(f.budget == nil)
        #expect(f.message.contains("math.randomseed is not available"), "\(f.message)")
        #expect(f.location == "t/policy.lua:3")
        let p = program(["policy": "return { access = function() probe.put(tostring(math.random(1 << 40))) end }"])
        var draws: Set<String> = []
        for _ in 0..<4 {
            let r = Recorder()
            #expect(runRequest(try LuaState(program: p), r).isDone)
            draws.formUnion(r.values)
        }
        #expect(draws.count == 4, "four states drew \(draws)")
    }

    /// `utf8.codes` validates as Lua 5.4.6: a stray continuation byte is an error.
    @Test func utf8CodesRejectsStrayContinuations() throws {
        let p = program(["policy": #"""
            return { access = function()
              for _, s in ipairs{"a\x80", "\xC3\xA9\x80", "\x80a", "ok\xC3\xA9", "\xED\xA0\x80", "\xF4\x90\x80\x80", "\xC0\x80", "\xE2\x82"} do
                local ok, err = pcall(function()
                  local n = 0
                  for _, c in utf8.codes(s) do n = n + 1 end
                  return n
                end)
                probe.put(tostring(ok) .. ":" .. tostring(err))
              end
              local lax = {}
              for _, c in utf8.codes("\xF4\x90\x80\x80\xED\xA0\x80", true) do lax[#lax + 1] = c end
              probe.put(table.concat(lax, ","))
            end }
            """#])
        let r = Recorder()
        let result = runRequest(try LuaState(program: p), r)
        #expect(result.isDone, "\(String(describing: result.failure))")
        #expect(r.values == [
            "false:t/policy.lua:5: invalid UTF-8 code", "false:t/policy.lua:5: invalid UTF-8 code",
            "false:t/policy.lua:5: bad argument #1 to 'codes' (invalid UTF-8 code)", "true:3",
            "false:t/policy.lua:5: invalid UTF-8 code", "false:t/policy.lua:5: invalid UTF-8 code",
            "false:t/policy.lua:5: invalid UTF-8 code", "false:t/policy.lua:5: invalid UTF-8 code", "1114112,55296",
        ])
    }

    /// `_G` is the module's environment: reads, writes, rawget, rawset and pairs work on it,
    /// and what a request sets through it is gone for the next, as any global.
    @Test func globalTableIsTheEnvironment() throws {
        let p = program(["policy": """
            config = "kept"
            local function helper() end
            return { access = function()
              probe.put(tostring(_G == _ENV))
              probe.put(tostring(rawget(_G, "config")))
              probe.put(tostring(rawget(_G, "leak")))
              probe.put(tostring(rawget(_G, "string") == string))
              _G.leak = "set"
              rawset(_G, "other", "raw")
              probe.put(leak .. other)
              local names = {}
              for k in pairs(_G) do if k == "config" or k == "leak" or k == "_G" or k == "print" or k == "string" then names[#names + 1] = k end end
              table.sort(names)
              probe.put(table.concat(names, ","))
              probe.put(tostring(_G._G == _G))
            end }
            """])
        let state = try LuaState(program: p)
        for _ in 0..<2 {
            let r = Recorder()
            let result = runRequest(state, r)
            #expect(result.isDone, "\(String(describing: result.failure))")
            state.endRequest()
            #expect(r.values == ["true", "kept", "nil", "true", "setraw", "_G,config,leak,print,string", "true"])
        }
    }

    /// `load` refuses binary chunks with Lua's own message and honours the chunk name.
    @Test func loadUsesLuasMessagesAndChunkNames() throws {
        let p = program(["policy": #"""
            return { access = function()
              probe.put(select(2, load("\27Lua", "x", "b")))
              probe.put(select(2, load("\27LuaT\0")))
              probe.put(select(2, load("return 1", "x", "b")))
              probe.put(select(2, load("syntax error here", "=mychunk")))
              probe.put(select(2, load("x(", "@rules.lua")))
              probe.put(select(2, pcall(load("error('boom')", "=named"))))
              probe.put(tostring(load("return _G ~= nil")()))
            end }
            """#])
        let r = Recorder()
        let result = runRequest(try LuaState(program: p), r)
        #expect(result.isDone, "\(String(describing: result.failure))")
        #expect(r.values == [
            "attempt to load a binary chunk (mode is 't')", "attempt to load a binary chunk (mode is 't')",
            "attempt to load a text chunk (mode is 'b')", "mychunk:1: syntax error near 'error'",
            "rules.lua:1: unexpected symbol near <eof>", "named:1: boom", "true",
        ])
    }
}
