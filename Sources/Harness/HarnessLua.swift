/// The test vocabulary (busted's): `describe`, `it`, `pending`, `before_each`,
/// `after_each` and `assert` with its checks. Runs as a prelude extension in test states
/// only; returns the runner the Swift side drives, one test per call, so that a test that
/// breaks its budget fails alone.
enum HarnessLua {
    static let source = #"""
local base, freeze = ...
local pcall, error, type, tostring, pairs, ipairs, select = base.pcall, base.error, base.type, base.tostring, base.pairs, base.ipairs, base.select
local sformat, sfind, srep, concat, sort = base.string.format, base.string.find, base.string.rep, base.table.concat, base.table.sort

-- "file:line" of the nearest test-file code calling in: error() adds positions, and the
-- harness's and sandbox's own frames are skipped (there is no debug library to ask).
local function where()
  for level = 2, 12 do
    local _, message = pcall(error, "@", level)
    local at = tostring(message):match("^(.-):?%s*@$")
    if at and at ~= "" and not at:find("^harness:") and not at:find("^prelude:") then return at end
  end
  return "?"
end

local tests = {}
local blocks = {{name = nil, before = {}, after = {}}}

local function full_name(name)
  local parts = {}
  for _, block in ipairs(blocks) do
    if block.name then parts[#parts + 1] = block.name end
  end
  parts[#parts + 1] = name
  return concat(parts, " ")
end

local function hooks()
  local before, after = {}, {}
  for _, block in ipairs(blocks) do
    for _, f in ipairs(block.before) do before[#before + 1] = f end
  end
  for i = #blocks, 1, -1 do
    for _, f in ipairs(blocks[i].after) do after[#after + 1] = f end
  end
  return before, after
end

base.describe = function(name, body)
  if type(name) ~= "string" or type(body) ~= "function" then error("describe(name, function)", 2) end
  blocks[#blocks + 1] = {name = name, before = {}, after = {}}
  body()
  blocks[#blocks] = nil
end

base.it = function(name, body)
  if type(name) ~= "string" or type(body) ~= "function" then error("it(name, function)", 2) end
  local before, after = hooks()
  tests[#tests + 1] = {name = full_name(name), body = body, before = before, after = after, where = where()}
end

base.pending = function(name)
  tests[#tests + 1] = {name = full_name(tostring(name)), pending = true, where = where()}
end

base.before_each = function(f)
  if type(f) ~= "function" then error("before_each(function)", 2) end
  local block = blocks[#blocks]
  block.before[#block.before + 1] = f
end

base.after_each = function(f)
  if type(f) ~= "function" then error("after_each(function)", 2) end
  local block = blocks[#blocks]
  block.after[#block.after + 1] = f
end

-- Values in failure messages: strings quoted, tables shown (sorted keys, three levels).
local function show(v, depth)
  depth = depth or 0
  if type(v) == "string" then return sformat("%q", v) end
  if type(v) ~= "table" then return tostring(v) end
  if depth >= 3 then return "{...}" end
  local keys = {}
  for k in pairs(v) do keys[#keys + 1] = k end
  sort(keys, function(a, b)
    if type(a) == type(b) and (type(a) == "number" or type(a) == "string") then return a < b end
    return type(a) < type(b)
  end)
  local parts = {}
  for i, k in ipairs(keys) do
    if i > 20 then parts[#parts + 1] = "..." break end
    local key = (type(k) == "string" and k:match("^[%a_][%w_]*$")) and k or ("[" .. show(k, depth + 1) .. "]")
    parts[#parts + 1] = key .. " = " .. show(v[k], depth + 1)
  end
  return "{" .. concat(parts, ", ") .. "}"
end

local function same(a, b, seen)
  if a == b then return true end
  if type(a) ~= "table" or type(b) ~= "table" then return false end
  seen = seen or {}
  if seen[a] == b then return true end
  seen[a] = b
  for k, v in pairs(a) do
    if not same(v, b[k], seen) then return false end
  end
  for k in pairs(b) do
    if a[k] == nil then return false end
  end
  return true
end

-- Raised from a check, at the line of the test that called the check.
local function fail(what, message)
  error((message and (message .. "\n") or "") .. what, 3)
end

local function differ(what, expected, actual, message)
  error((message and (message .. "\n") or "") .. what .. "\nexpected: " .. show(expected) .. "\n  actual: " .. show(actual), 3)
end

-- An error's text without the "file:line: " error() put in front of it.
local function bare(message)
  if type(message) ~= "string" then return message end
  return (message:gsub("^[^:\n]+:%d+: ", "", 1))
end

local A = {}
A.equals = function(expected, actual, message)
  if expected ~= actual then differ("values are not equal", expected, actual, message) end
end
A.same = function(expected, actual, message)
  if not same(expected, actual) then differ("values are not the same (deep)", expected, actual, message) end
end
A.truthy = function(value, message)
  if not value then fail("expected a truthy value, got " .. show(value), message) end
end
A.falsy = function(value, message)
  if value then fail("expected a falsy value, got " .. show(value), message) end
end
A.is_nil = function(value, message)
  if value ~= nil then fail("expected nil, got " .. show(value), message) end
end
A.not_nil = function(value, message)
  if value == nil then fail("expected a value, got nil", message) end
end
A.is_true = function(value, message)
  if value ~= true then differ("expected true", true, value, message) end
end
A.is_false = function(value, message)
  if value ~= false then differ("expected false", false, value, message) end
end
A.matches = function(pattern, actual, message)
  if type(actual) ~= "string" or not sfind(actual, pattern) then
    fail("no match for pattern " .. show(pattern) .. " in " .. show(actual), message)
  end
end
A.has_error = function(f, expected, message)
  local ok, err = pcall(f)
  if ok then fail("expected an error, none was raised", message) end
  if expected ~= nil and bare(err) ~= expected and err ~= expected then
    differ("the error is not the one expected", expected, bare(err), message)
  end
end
A.error_matches = function(f, pattern, message)
  local ok, err = pcall(f)
  if ok then fail("expected an error, none was raised", message) end
  if type(err) ~= "string" or not sfind(err, pattern) then
    fail("the error does not match " .. show(pattern) .. ": " .. show(err), message)
  end
end
A.are, A.is = A, A
base.assert = base.setmetatable(A, {
  __call = function(_, value, message, ...)
    if not value then error(message or "assertion failed!", 2) end
    return value, message, ...
  end,
})

return {
  count = function() return #tests end,
  info = function(i)
    local t = tests[i]
    return t.name, t.where, t.pending == true
  end,
  -- Runs test i: its before_each hooks (outermost first), the test, its after_each hooks.
  run = function(i)
    local t = tests[i]
    if t.pending then return "pending" end
    local ok, err = true, nil
    for _, f in ipairs(t.before) do
      ok, err = pcall(f)
      if not ok then break end
    end
    if ok then ok, err = pcall(t.body) end
    for _, f in ipairs(t.after) do
      local ok2, err2 = pcall(f)
      if ok and not ok2 then ok, err = ok2, err2 end
    end
    if ok then return "pass" end
    return "fail", type(err) == "string" and err or show(err)
  end,
}
"""#
}
