/// The Lua side of the sandbox, run once per state with the full standard library in reach.
/// It captures what scripts may use, builds their environment from frozen copies, and then
/// empties the global table, so nothing else stays reachable from a script.
///
/// Arguments: the runtime's yield sentinel, `module_source(name)` (Swift), and a list of
/// extension sources (the test harness), each run with `(base, freeze)` before the globals
/// are hidden. Returns a table with `require` (scripts-directory modules only), `stash` and
/// `unstash` (a request's globals put aside and back) and `extensions` (what each extension returned).
enum Prelude {
    static let source = #"""
local SENTINEL, module_source, extension_sources = ...
local G = _G
local type, error, rawget, rawequal, next, select, tostring, ipairs, math =
      type, error, rawget, rawequal, next, select, tostring, ipairs, math
local raw_setmetatable, raw_rawset, raw_load, raw_pcall, raw_xpcall =
      setmetatable, rawset, load, pcall, xpcall
local killed, charge, cocreate, dirty = __killed, __charge, __cocreate, __dirty
local co_resume, co_yield, co_status, co_running, co_isyieldable, co_close =
      coroutine.resume, coroutine.yield, coroutine.status, coroutine.running,
      coroutine.isyieldable, coroutine.close

-- Library tables are shared by every request a state serves: scripts see read-only views.
local frozen = raw_setmetatable({}, {__mode = "k"})
local function freeze(t, name)
  local view = raw_setmetatable({}, {
    __index = t,
    __newindex = function(_, k)
      error("cannot change " .. name .. "." .. tostring(k) .. ": library tables are read-only", 2)
    end,
    __pairs = function() return next, t, nil end,
    __metatable = false,
  })
  frozen[view] = true
  return view
end

-- A budget error must end the request, whatever the script catches.
local function pass(ok, ...)
  if not ok and killed() then error((...), 0) end
  return ok, ...
end

local base = {_VERSION = _VERSION}
for _, name in ipairs{"assert", "error", "ipairs", "next", "pairs", "rawequal",
                      "rawlen", "select", "tonumber", "tostring", "type", "getmetatable"} do
  base[name] = G[name]
end
base.pcall = function(f, ...) return pass(raw_pcall(f, ...)) end

-- Lua calls an xpcall message handler where the error was raised, before unwinding; when
-- the error comes from the count hook, hooks are off there and a handler that loops would
-- never be stopped. Here the handler runs after unwinding, as ordinary code under the
-- budget, and never after a budget error. An error in the handler is handled again, as
-- Lua does, until Lua's "error in error handling".
local function handled(handler, ok, ...)
  if ok then return true, ... end
  local err = ...
  if killed() then error(err, 0) end
  for _ = 1, 10 do
    local fine, value = raw_pcall(handler, err)
    if fine then return false, value end
    if killed() then error(value, 0) end
    err = value
  end
  return false, "error in error handling"
end
base.xpcall = function(f, handler, ...)
  if type(handler) ~= "function" then
    error("bad argument #2 to 'xpcall' (function expected, got " .. (handler == nil and "no value" or type(handler)) .. ")", 2)
  end
  return handled(handler, raw_pcall(f, ...))
end
base.setmetatable = function(t, mt)
  -- Finalizers would run at any later time, outside any request's budget.
  if type(mt) == "table" and rawget(mt, "__gc") ~= nil then
    error("setmetatable: __gc metamethods are not allowed", 2)
  end
  return raw_setmetatable(t, mt)
end

-- A module's environment (its `_G`) is empty: its globals live in layers behind it (see
-- `seal`). rawget, rawset and pairs on it see the layers, as they would see a global table.
local layers_of = raw_setmetatable({}, {__mode = "k"})
base.rawget = function(t, k)
  local layers = layers_of[t]
  if layers == nil then
    local value = rawget(t, k)
    return value
  end
  local value = rawget(layers.entry.globals, k)
  if value == nil then value = rawget(layers.kept, k) end
  if value == nil then value = rawget(base, k) end
  return value
end
base.rawset = function(t, k, v)
  if frozen[t] then error("rawset: library tables are read-only", 2) end
  if layers_of[t] then t[k] = v return t end
  local rawset = raw_rawset
  rawset(t, k, v)
  return t
end
local function layered_pairs(t)
  local layers = layers_of[t]
  local order, i, seen, key = {layers.entry.globals, layers.kept, base}, 1, {}, nil
  return function()
    while i <= 3 do
      local value
      key, value = next(order[i], key)
      if key == nil then
        i = i + 1
      elseif not seen[key] then
        seen[key] = true
        return key, value
      end
    end
  end, t, nil
end

-- `load` compiles text only, in a fresh environment unless one is given. Lua's own
-- messages for the refused kinds of chunk, and its default chunk name (the source).
local function fresh_env()
  local env = raw_setmetatable({}, {__index = base, __metatable = false})
  env._G = env
  return env
end
base.load = function(chunk, name, mode, env)
  if type(chunk) ~= "string" then error("load: only source strings are accepted", 2) end
  charge(#chunk // 16)
  if mode ~= nil and type(mode) ~= "string" then
    error("bad argument #3 to 'load' (string expected, got " .. type(mode) .. ")", 2)
  end
  if chunk:byte(1) == 27 then return nil, "attempt to load a binary chunk (mode is 't')" end
  if mode ~= nil and not mode:find("t", 1, true) then
    return nil, "attempt to load a text chunk (mode is '" .. mode .. "')"
  end
  if env == nil then env = fresh_env() end
  if name == nil then name = chunk end
  return raw_load(chunk, name, "t", env)
end

-- Coroutines, counted per request. A wait inside the runtime (an API call that yields)
-- made from a script's own coroutine is passed up to the runtime and its answer back down.
local function pass_co(co, ok, ...)
  if ok then
    if rawequal((...), SENTINEL) and co_status(co) == "suspended" then
      return pass_co(co, co_resume(co, co_yield(...)))
    end
    return true, ...
  end
  if killed() then error((...), 0) end
  return false, ...
end
local function resume(co, ...) return pass_co(co, co_resume(co, ...)) end
local function unwrap(co, ok, ...)
  if ok then return ... end
  co_close(co)
  error((...), 0)
end
base.coroutine = freeze({
  create = cocreate,
  resume = resume,
  wrap = function(f)
    local co = cocreate(f)
    return function(...) return unwrap(co, resume(co, ...)) end
  end,
  yield = co_yield, status = co_status, running = co_running,
  isyieldable = co_isyieldable, close = co_close,
}, "coroutine")

base.string = freeze(string, "string")
base.table = freeze(table, "table")
-- The state's generator is seeded from the system's random source when it opens; a script
-- that reseeded it would decide what every later request on the state draws.
local math_view = {}
for k, v in next, math do math_view[k] = v end
math_view.randomseed = function()
  error("math.randomseed is not available: each Lua state's generator is seeded from the system's random source", 2)
end
base.math = freeze(math_view, "math")
base.utf8 = freeze(utf8, "utf8")
base.os = freeze({time = os.time, clock = os.clock, date = os.date}, "os")
-- The string metatable is shared by every string: nobody may reach or change it.
getmetatable("").__metatable = false

-- API modules registered by the runtime (request, json, log, ...), and plain functions.
for name, value in next, G.__api do
  base[name] = type(value) == "table" and freeze(value, name) or value
end

-- Module environments. While a module loads, its globals are its own; once loaded they are
-- read-only to requests, and what a request assigns goes to a table of its own. Requests
-- take turns on a state (one runs while others wait on Redis or a body), so after each turn
-- of a request that assigned one the runtime puts those tables aside (`stash`) and gives
-- them back at its next turn (`unstash`): nothing one request sets is seen by another.
local sealed = {}
local function seal(env)
  local kept = {}
  for k, v in next, env do kept[k] = v end
  for k in next, kept do env[k] = nil end
  raw_setmetatable(kept, {__index = base})
  local entry = {}
  local meta = {__metatable = false, __pairs = layered_pairs}
  entry.fresh = function()
    entry.globals = raw_setmetatable({}, {__index = kept})
    meta.__index = entry.globals
    entry.dirty = false
  end
  meta.__newindex = function(_, k, v)
    if not entry.dirty then entry.dirty = true; dirty() end
    entry.globals[k] = v
  end
  entry.meta = meta
  entry.fresh()
  raw_setmetatable(env, meta)
  layers_of[env] = {entry = entry, kept = kept}
  sealed[#sealed + 1] = entry
end
-- The request globals assigned since the last stash, as a table to give to `unstash`;
-- every module's globals are fresh afterwards.
local function stash()
  local saved = {}
  for i = 1, #sealed do
    local entry = sealed[i]
    if entry.dirty then
      saved[entry] = entry.globals
      entry.fresh()
    end
  end
  return saved
end
local function unstash(saved)
  for entry, globals in next, saved do
    entry.globals = globals
    entry.meta.__index = globals
    entry.dirty = true
  end
end

local loaded, LOADING = {}, {}
local function require(name)
  if type(name) ~= "string" then error("require: module name must be a string", 2) end
  local m = loaded[name]
  if m == LOADING then error("require: module '" .. name .. "' is being loaded (a cycle)", 2) end
  if m ~= nil then return m end
  local source, chunkname = module_source(name)
  if source == nil then error(chunkname, 2) end
  local env = raw_setmetatable({}, {__index = base})
  env._G = env
  local chunk, err = raw_load(source, chunkname, "t", env)
  if chunk == nil then error(err, 0) end
  loaded[name] = LOADING
  local ok, result = raw_pcall(chunk, name)
  if not ok then
    loaded[name] = nil
    error(result, 0)
  end
  if result == nil then result = true end
  seal(env)
  loaded[name] = result
  return result
end
base.require = require

local extensions = {}
for i, source in ipairs(extension_sources) do
  local f = assert(raw_load(source, "=harness", "t", G))
  extensions[i] = f(base, freeze) or false
end

-- Plugin chains. A plugin's conf is built once per generation and read-only to its phases.
local function readonly(t, name)
  if type(t) ~= "table" or frozen[t] then return t end
  for k, v in next, t do
    if type(v) == "table" then t[k] = readonly(v, name) end
  end
  local view = raw_setmetatable({}, {
    __index = t,
    __newindex = function(_, k)
      error("cannot change " .. name .. "." .. tostring(k) .. ": a plugin's conf is read-only", 2)
    end,
    __len = function() return #t end,
    __pairs = function() return next, t, nil end,
    __metatable = false,
  })
  frozen[view] = true
  return view
end

-- The phase functions of one chain: each phase calls the plugins that define it, in order,
-- then the route's policy. An answer (request.respond, a 429) ends the phase where it is,
-- so it ends the chain. Only phases someone defines exist, so the runtime can give the state
-- back after access when nothing later runs.
local PHASES = {"access", "response", "log"}
local function chain(links, policy_module)
  local plugins, confs = {}, {}
  for i = 1, #links do
    local link = links[i]
    local plugin = require(link.module)
    if type(plugin) ~= "table" then error("plugin " .. link.name .. ": its module must return a table", 0) end
    -- prepare(conf) gets the conf (this state's own copy) and returns what the phases get:
    -- lookup tables, parsed ranges. Its result is the plugin's to keep unchanged; a plain
    -- conf is handed to the phases read-only.
    local conf = link.conf
    if plugin.prepare ~= nil then
      conf = plugin.prepare(conf)
      if conf == nil then conf = link.conf end
    else
      conf = readonly(conf, "conf")
    end
    plugins[i], confs[i] = plugin, conf
  end
  local policy = policy_module and require(policy_module)
  if policy_module and type(policy) ~= "table" then
    error("policy " .. policy_module .. ": a policy must return a table of phase functions (access, response, log)", 0)
  end
  local out = {}
  for _, phase in ipairs(PHASES) do
    local fs, cs, k = {}, {}, 0
    for i = 1, #plugins do
      local f = plugins[i][phase]
      if f ~= nil then
        if type(f) ~= "function" then error("plugin " .. links[i].name .. ": " .. phase .. " must be a function", 0) end
        k = k + 1
        fs[k], cs[k] = f, confs[i]
      end
    end
    local pf = policy and policy[phase]
    if k == 1 and pf == nil then
      local f, c = fs[1], cs[1]
      out[phase] = function(ctx) return f(c, ctx) end
    elseif k > 0 then
      out[phase] = function(ctx)
        for i = 1, k do fs[i](cs[i], ctx) end
        if pf ~= nil then return pf(ctx) end
      end
    elseif pf ~= nil then
      out[phase] = pf
    end
  end
  return out
end

for k in next, G do G[k] = nil end
return {require = require, stash = stash, unstash = unstash, extensions = extensions, chain = chain}
"""#
}
