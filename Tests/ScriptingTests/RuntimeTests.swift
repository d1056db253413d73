import Config
import Scripting
import Testing

@Suite struct RuntimeTests {
    func run(_ source: String, requests: Int = 1, modules: [String: String] = [:]) throws -> [[String]] {
        var files = modules
        files["policy"] = source
        let state = try LuaState(program: program(files))
        var out: [[String]] = []
        for _ in 0..<requests {
            let r = Recorder()
            let result = runRequest(state, r)
            #expect(result.isDone, "\(String(describing: result.failure))")
            state.endRequest()
            out.append(r.values)
        }
        return out
    }

    @Test func phasesShareCtxWithinARequestOnly() throws {
        let out = try run("""
            return {
              access = function(ctx) probe.put(tostring(ctx.seen)) ctx.seen = "yes" end,
              response = function(ctx) probe.put(ctx.seen) end,
              log = function(ctx) probe.put(ctx.seen .. "!") end,
            }
            """, requests: 2)
        #expect(out == [["nil", "yes", "yes!"], ["nil", "yes", "yes!"]])
    }

    /// What one request assigns to globals is gone for the next; module-level globals stay.
    @Test func requestGlobalsDoNotLeak() throws {
        let out = try run("""
            greeting = "hello"
            local n = 0
            return { access = function()
              n = n + 1
              probe.put(tostring(leaked))
              leaked = "secret" .. n
              greeting = "changed"
              probe.put(greeting)
            end, log = function() probe.put(greeting) end }
            """, requests: 3)
        #expect(out == [["nil", "changed", "changed"], ["nil", "changed", "changed"], ["nil", "changed", "changed"]])
        let kept = try run("""
            greeting = "hello"
            return { access = function() probe.put(greeting) greeting = "changed" end }
            """, requests: 2)
        #expect(kept == [["hello"], ["hello"]])
    }

    @Test func requireLoadsFromTheScriptsDirectoryOnly() throws {
        let out = try run("""
            local util = require("lib.util")
            return { access = function()
              probe.put(util.double(21))
              probe.put(tostring(require("lib.util") == util))
              local ok, err = pcall(require, "os")
              probe.put(err)
              probe.put(select(2, pcall(require, "../etc/passwd")))
            end }
            """, modules: ["lib.util": "return { double = function(x) return x * 2 end }"])
        #expect(out == [["42", "true", "module 'os' not found: no os.lua in t", "module '../etc/passwd' not found: module names are made of names separated by dots, such as lib.util"]])
    }

    @Test func json() throws {
        let out = try run(#"""
            return { access = function()
              local v = json.decode('{"a":[1,2.5,"x\\u00e9\\ud83d\\ude00",true,null],"b":{"c":-0.125e2}}')
              probe.put(v.a[1] .. " " .. v.a[2] .. " " .. v.a[3] .. " " .. tostring(v.a[4]) .. " " .. tostring(v.a[5] == json.null) .. " " .. v.b.c)
              probe.put(json.encode({1, 2, "three", {x = false}}))
              probe.put(json.encode({s = "quote\" back\\ nl\n ctl\1"}))
              probe.put(json.encode({}) .. json.encode(json.empty_array) .. json.encode(json.null) .. json.encode(0.1) .. json.encode(2^53))
              for _, bad in ipairs{'{"a":}', '[1,2', '"\\x"', '01', '{"a":1}x', '"\\ud800"', string.rep("[", 100000), ""} do
                local value, err = json.decode(bad)
                probe.put(tostring(value) .. ": " .. err)
              end
              local t = {} t.self = t
              probe.put(select(2, pcall(json.encode, t)))
              probe.put(select(2, pcall(json.encode, {f = print})))
              probe.put(select(2, pcall(json.encode, 0/0)))
            end }
            """#)
        let lines = try #require(out.first)
        #expect(lines.count == 15)
        #expect(lines[0] == "1 2.5 xé😀 true true -12.5")
        #expect(lines[1] == #"[1,2,"three",{"x":false}]"#)
        #expect(lines[2] == #"{"s":"quote\" back\\ nl\n ctl\u0001"}"#)
        #expect(lines[3] == "{}[]null0.19007199254740992")
        #expect(lines[4].hasPrefix("nil: unexpected character at byte 6"))
        #expect(lines[5].hasPrefix("nil: unterminated array"))
        #expect(lines[6].hasPrefix("nil: bad escape"))
        #expect(lines[7].hasPrefix("nil: trailing characters"))
        #expect(lines[8].hasPrefix("nil: trailing characters"))
        #expect(lines[9].hasPrefix("nil: unpaired surrogate"))
        #expect(lines[10].hasPrefix("nil: nesting too deep"))
        #expect(lines[11].hasPrefix("nil: unexpected end of input"))
        #expect(lines[12].contains("nesting deeper than 128"))
        #expect(lines[13].contains("cannot encode a function"))
        #expect(lines[14].contains("cannot encode NaN"))
    }

    @Test func logsCarryTheScriptLine() throws {
        let state = try LuaState(program: program(["policy": "return { access = function()\nlog.warn('careful', 42, true, nil, {})\nprint('hi') end }"]))
        let r = Recorder()
        #expect(runRequest(state, r).isDone)
        #expect(r.logs.count == 2)
        #expect(r.logs.first?.1 == "careful 42 true nil <table>")
        #expect(r.logs.first?.2 == "t/policy.lua:2")
        #expect(r.logs.last?.0 == .info)
    }

    @Test func aLoopCannotFloodTheLog() throws {
        let state = try LuaState(program: program(["policy": "return { access = function() for i = 1, 10000 do log.info('line', i) end end }"]))
        let r = Recorder()
        #expect(runRequest(state, r).isDone)
        #expect(r.logs.count == 101)
        #expect(r.logs.last?.0 == .warning)
        #expect(r.logs.last?.1.contains("the rest are dropped") == true)
        let next = Recorder()
        state.endRequest()
        #expect(runRequest(state, next).isDone)
        #expect(next.logs.count == 101, "the count is per request")
    }

    @Test func nowComesFromTheProgramClock() throws {
        struct Fixed: ScriptClock {
            func now() -> Double { 1_700_000_000.5 }
            func nanoseconds() -> Int64 { 1_700_000_000_500_000_000 }
        }
        let base = program(["policy": "return { access = function() probe.put(string.format('%.1f', now())) end }"])
        let p = ScriptProgram(scripts: base.scripts, policies: ["policy"], modules: base.modules, settings: base.settings, clock: Fixed())
        let r = Recorder()
        #expect(runRequest(try LuaState(program: p), r).isDone)
        #expect(r.values == ["1700000000.5"])
    }

    // MARK: load errors: file:line, and nothing is loaded

    func loadErrors(_ files: [String: String], policies: [String] = ["policy"]) -> [String] {
        do {
            try program(files, policies: policies).validate()
            return []
        } catch {
            return error.errors.map(\.description)
        }
    }

    @Test func syntaxErrorsNameFileAndLine() {
        let errors = loadErrors(["policy": "return {\n access = function()\n  local x = = 1\n end }", "other": "x = ("])
        #expect(errors == ["t/other.lua:1: unexpected symbol near <eof>", "t/policy.lua:3: unexpected symbol near '='"])
    }

    @Test func moduleThatRaisesAtLoad() {
        #expect(loadErrors(["policy": "local x = 1\nerror('no config')\nreturn {}"]) == ["t/policy.lua:2: no config"])
        #expect(loadErrors(["policy": "return require('helper')", "helper": "\n\nlocal t = nil\nreturn t.x"])
            == ["t/helper.lua:4: attempt to index a nil value (local 't')"])
    }

    @Test func policyShapeIsChecked() {
        #expect(loadErrors(["policy": "return 42"]) == ["t/policy.lua: a policy must return a table of phase functions (access, response, log)"])
        #expect(loadErrors(["policy": "return {}"]) == ["t/policy.lua: the policy defines no phase (expected access, response or log)"])
        #expect(loadErrors(["policy": "return { acess = function() end }"])
            == ["t/policy.lua: unknown phase \"acess\" in the returned table (expected access, response or log)"])
        #expect(loadErrors(["policy": "return { access = 'yes' }"]) == ["t/policy.lua: phase \"access\" must be a function, not a string"])
        #expect(loadErrors([:], policies: ["missing"]) == ["policy missing: no missing.lua in t"])
    }

    @Test func aModuleThatLoopsAtLoadDoesNotHang() {
        let start = ContinuousClock.now
        let errors = loadErrors(["policy": "while true do end"])
        #expect(errors.count == 1)
        #expect(errors.first?.contains("cpu budget exceeded") == true)
        #expect(ContinuousClock.now - start < .seconds(5))
    }
}
