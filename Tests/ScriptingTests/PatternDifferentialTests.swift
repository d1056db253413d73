import CLua
import CLuaRuntime
import Foundation
import Testing

/// Our pattern functions (lua_patterns.c) are the same language as the system's Lua 5.4
/// string library: generated cases run through both, with the same results and the same
/// errors. Set MOONGATE_PATTERN_CASES and MOONGATE_PATTERN_SEED to explore further.
@Suite struct PatternDifferentialTests {
    /// A bare state with no limits: `stock` is the system's string library, `ours` our pattern
    /// functions; the generator is Lua, so a case costs microseconds.
    func compare(cases: Int, seed: Int) throws -> (cases: Int, mismatches: [String]) {
        let budget = UnsafeMutablePointer<mg_budget>.allocate(capacity: 1)
        budget.initialize(to: mg_budget())
        budget.pointee.limit = Int.max
        defer { budget.deallocate() }
        let L = try #require(mg_newstate(budget))
        defer { lua_close(L) }
        luaL_openlibs(L)
        let loaded = Self.generator.utf8CString.withUnsafeBufferPointer { mg_load(L, $0.baseAddress, $0.count - 1, "=differential") }
        #expect(loaded == LUA_OK, "\(String(cString: lua_tolstring(L, -1, nil)))")
        luaopen_string(L)
        mg_open_patterns(L)
        lua_pushinteger(L, lua_Integer(cases))
        lua_pushinteger(L, lua_Integer(seed))
        let status = mg_pcall(L, 4, 3, 0)
        guard status == LUA_OK else {
            Issue.record("the generator failed: \(String(cString: lua_tolstring(L, -1, nil)))")
            return (0, [])
        }
        print("pattern differential outcomes: \(String(cString: lua_tolstring(L, -1, nil)))")
        mg_pop(L, 1)
        let ran = Int(lua_tointegerx(L, -2, nil))
        var mismatches: [String] = []
        let n = lua_rawlen(L, -1)
        for i in 0..<min(Int(n), 20) {
            lua_rawgeti(L, -1, lua_Integer(i + 1))
            mismatches.append(String(cString: lua_tolstring(L, -1, nil)))
            mg_pop(L, 1)
        }
        if n > 20 { mismatches.append("... and \(n - 20) more") }
        return (ran, mismatches)
    }

    @Test func generatedCasesAgreeWithTheSystemLibrary() throws {
        let environment = ProcessInfo.processInfo.environment
        let cases = environment["MOONGATE_PATTERN_CASES"].flatMap(Int.init) ?? 120_000
        let seed = environment["MOONGATE_PATTERN_SEED"].flatMap(Int.init) ?? 20_261_203
        let started = ContinuousClock.now
        let result = try compare(cases: cases, seed: seed)
        print("pattern differential: \(result.cases) cases (seed \(seed)) in \(ContinuousClock.now - started), \(result.mismatches.count) mismatches")
        #expect(result.cases >= cases)
        #expect(result.mismatches.isEmpty, "\(result.mismatches.joined(separator: "\n"))")
    }

    /// The generator and the comparison. Each case calls one function of both libraries with
    /// the same arguments (a `gsub` function or table replacement behaves the same for both,
    /// and what it was called with is compared too).
    static let generator = #"""
local stock, ours, N, seed = ...
math.randomseed(seed)
local R = math.random
local function pick(t) return t[R(#t)] end
local concat, pack, unpack = table.concat, table.pack, table.unpack

local plain = {"a", "b", "c", "x", "y", "1", "2", " ", "\0", "\200", "\255", ",", ";", "]", "é", "\n", "A", "Z"}
local classes = {"%a", "%A", "%c", "%C", "%d", "%D", "%g", "%G", "%l", "%L", "%p", "%P", "%s", "%S",
                 "%u", "%U", "%w", "%W", "%x", "%X", ".", "%.", "%%", "%]", "%-", "%(", "%z", "%Q", "%^", "%$", "%\0"}

local function set()
  local parts = {"["}
  if R(3) == 1 then parts[#parts + 1] = "^" end
  if R(8) == 1 then parts[#parts + 1] = "]" end
  for _ = 1, R(0, 4) do
    local r = R(6)
    if r == 1 then parts[#parts + 1] = pick{"a-f", "0-9", "x-a", "A-Z", "\0-\31", "\128-\255", "--a"}
    elseif r == 2 then parts[#parts + 1] = pick(classes)
    elseif r == 3 then parts[#parts + 1] = pick{"-", "^", "[", "%", "%]"}
    else parts[#parts + 1] = pick(plain) end
  end
  if R(25) ~= 1 then parts[#parts + 1] = "]" end
  return concat(parts)
end

local function single()
  local r = R(12)
  if r <= 5 then return pick(plain)
  elseif r <= 8 then return pick(classes)
  elseif r <= 10 then return set()
  else return pick{"^", "$", "-", "?", "*", "+", "%"} end
end

local sequence
local function item(depth)
  local r = R(24)
  if r <= 12 then return single() .. pick{"", "", "", "*", "+", "-", "?"}
  elseif r <= 15 and depth < 4 then return "(" .. sequence(depth + 1) .. (R(15) == 1 and "" or ")")
  elseif r == 16 then return "()"
  elseif r == 17 then return "%b" .. pick{"()", "ab", "xx", "[]", "a", "", "\0\255"}
  elseif r == 18 then return "%f" .. (R(12) == 1 and "a" or set())
  elseif r == 19 then return "%" .. R(0, 9)
  elseif r == 20 then return pick{")", "(", "%", "$", "^"}
  else return pick(plain) end
end
function sequence(depth)
  local parts = {}
  for i = 1, R(0, depth == 0 and 7 or 3) do parts[i] = item(depth) end
  return concat(parts)
end

local function pattern()
  local r = R(40)
  if r == 1 then return string.rep("a?", 210) .. "b" end                   -- depth limit
  if r == 2 then return string.rep("(a)", R(30, 34)) end                   -- capture limit
  if r == 3 then return string.rep("%w+", R(1, 3)) .. "$" end
  local p = sequence(0)
  if R(4) == 1 then p = "^" .. p end
  if R(5) == 1 then p = p .. "$" end
  return p
end

local subject_any
local alphabet = {"a", "b", "c", "x", "y", "1", "2", " ", "(", ")", "[", "]", "%", "-", ".", "^", "$",
                  "\0", "\200", "é", ",", ";", "\n", "A", "Z", "_"}
-- Backtracking is polynomial in the subject with the number of quantifiers as exponent
-- (in both libraries): subjects are kept short enough for every case to take microseconds.
local function longest(p)
  local _, q = stock.gsub(p, "[%*%+%-%?]", "")
  if q <= 2 then return 300 end
  return math.max(4, math.floor(4000 ^ (1 / q)))
end

local function subject(p)
  if p == string.rep("a?", 210) .. "b" then return string.rep("a", R(195, 205)) .. "b" end
  local s = subject_any(p)
  local most = longest(p)
  if #s > most then s = s:sub(1, most) end
  return s
end

function subject_any(p)
  local r = R(12)
  if r == 1 then return "" end
  if r == 2 then
    local bytes = {}
    for i = 1, R(0, 24) do bytes[i] = string.char(R(0, 255)) end
    return concat(bytes)
  end
  if r == 3 then return string.rep("a", R(1, 260)) end
  if r <= 6 then  -- the pattern's own bytes, so that more cases match
    local bytes = {}
    for i = 1, R(0, 24) do
      local k = R(1, math.max(#p, 1))
      bytes[i] = R(3) == 1 and pick(alphabet) or p:sub(k, k)
    end
    return concat(bytes)
  end
  local parts = {}
  for i = 1, R(0, 24) do parts[i] = pick(alphabet) end
  return concat(parts)
end

local function init()
  local r = R(14)
  if r <= 6 then return nil end
  if r <= 11 then return R(-30, 30) end
  return pick{0, math.maxinteger, math.mininteger, 2.0, 2.5, "3", {}, -1}
end

local function serialize(out, ok, ...)
  out[#out + 1] = ok and "ok" or "error"
  for i = 1, select("#", ...) do
    local v = select(i, ...)
    local t = type(v)
    if t == "string" or t == "number" or t == "boolean" or t == "nil" then
      out[#out + 1] = t .. ":" .. tostring(v)
    else
      out[#out + 1] = t
    end
  end
end

-- Error messages name the function by how it was called; the names differ between the
-- libraries' tables, the messages must not otherwise.
local function normalize(s) return (stock.gsub(s, "to '[^']*'", "to '?'")) end

-- A gsub replacement that behaves the same for both runs: what it returns is decided by
-- the case, and each call's arguments are logged.
local function replacement(kind, log)
  if kind == 1 then return pick{"%0", "%1", "%2", "%%", "<%1>", "x", "%a", "%", "%9", "[%0%0]", "", "%3%2%1", "\0"} end
  if kind == 2 then return pick{42, 1.5, -7} end
  if kind == 3 then
    return setmetatable({a = "A", b = false, x = 1.5, y = {}, [""] = "E", ["1"] = "one"},
      {__index = function(_, k) log[#log + 1] = "index:" .. tostring(k) return nil end})
  end
  local mode = R(7)
  return function(...)
    local args = {}
    serialize(args, true, ...)
    log[#log + 1] = concat(args, ",")
    if mode == 1 then return nil end
    if mode == 2 then return false end
    if mode == 3 then return {} end
    if mode == 4 then return 7 end
    if mode == 5 then error("from the replacement") end
    return "<" .. concat(args, ",") .. ">"
  end
end

local mismatches, ran, tally = {}, 0, {}
local function check(name, args, lib_call)
  local a, b = {}, {}
  local la, lb = {}, {}
  serialize(a, pcall(lib_call, stock, la))
  serialize(b, pcall(lib_call, ours, lb))
  local sa, sb = normalize(concat(a, "|")) .. concat(la, ";"), normalize(concat(b, "|")) .. concat(lb, ";")
  ran = ran + 1
  local outcome = name .. " " .. (a[1] == "error" and "error" or (a[2] == "nil:nil" or a[2] == "string:") and "no match" or "match")
  tally[outcome] = (tally[outcome] or 0) + 1
  if sa ~= sb then
    local shown = {}
    for i = 1, args.n do shown[i] = string.format("%q", args[i]) end
    mismatches[#mismatches + 1] = name .. "(" .. concat(shown, ", ") .. "): system " .. sa .. " / ours " .. sb
  end
end

local function quoted(v) if type(v) == "string" or type(v) == "number" then return v else return tostring(v) end end

for _ = 1, N do
  local p = pattern()
  local s = subject(p)
  local which = R(4)
  if R(200) == 1 then s = pick{nil, 12, {}} end
  if R(400) == 1 then p = pick{nil, 3, true} end
  if which == 1 then
    local i, plain_flag = init(), pick{nil, nil, nil, true, false, 1}
    check("find", pack(quoted(s), quoted(p), quoted(i), quoted(plain_flag)), function(lib) return lib.find(s, p, i, plain_flag) end)
  elseif which == 2 then
    local i = init()
    check("match", pack(quoted(s), quoted(p), quoted(i)), function(lib) return lib.match(s, p, i) end)
  elseif which == 3 then
    local i = init()
    check("gmatch", pack(quoted(s), quoted(p), quoted(i)), function(lib)
      local out = {}
      for a, b, c in lib.gmatch(s, p, i) do
        out[#out + 1] = tostring(a) .. "," .. tostring(b) .. "," .. tostring(c)
        if #out > 60 then break end
      end
      return concat(out, ";")
    end)
  else
    local kind = R(5) == 1 and 2 or R(4) == 1 and 3 or R(3) == 1 and 4 or 1
    if R(300) == 1 then kind = 5 end
    local n = R(5) == 1 and pick{0, 1, 2, -1, 1.5} or nil
    local state = R(1, 1 << 30)
    check("gsub", pack(quoted(s), quoted(p), "repl#" .. kind, quoted(n)), function(lib, log)
      math.randomseed(state)  -- the same replacement for both libraries
      local repl = kind == 5 and nil or replacement(kind, log)
      return lib.gsub(s, p, repl, n)
    end)
  end
end

-- The manual's own examples and edges the generator rarely reaches.
local fixed = {
  {"find", "hello world", "o w"}, {"find", "hello", "l+"}, {"match", "hello world", "(h)(e)(l)(l)(o)"},
  {"match", "key = value", "(%w+)%s*=%s*(%w+)"}, {"match", "THE (quick) fox", "%f[%a]%a+%f[%A]"},
  {"gsub", "hello world", "(%w+)", "%1 %1"}, {"gsub", "hello world", "%w+", "%0 %0", 1},
  {"gsub", "abc", "", "-"}, {"gsub", "abc", "%w*", "-"}, {"find", "x(a(b)c)y", "%b()"},
  {"match", "  trim  ", "^%s*(.-)%s*$"}, {"find", "a.b", ".", 1, true}, {"find", "abc", "", 10},
  {"find", "abc", "", 4}, {"match", "[[x]]", "%[(%[.-%])%]"}, {"gsub", "abc", ".", {a = 1, b = true}},
  {"match", string.rep("a", 5000) .. "b", "a-b"}, {"match", string.rep("(", 300) .. string.rep(")", 300), "%b()"},
}
for _, c in ipairs(fixed) do
  local name = c[1]
  check(name, pack(unpack(c, 2)), function(lib)
    if name == "gsub" then return lib.gsub(c[2], c[3], c[4], c[5]) end
    return lib[name](c[2], c[3], c[4], c[5])
  end)
end

local outcomes = {}
for k, v in pairs(tally) do outcomes[#outcomes + 1] = k .. ": " .. v end
table.sort(outcomes)
return ran, mismatches, concat(outcomes, ", ")
"""#
}
