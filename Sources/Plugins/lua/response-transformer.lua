-- response-transformer: removes, renames, replaces (when present) and adds (when absent)
-- response headers and JSON body fields, in that order.
local response, json, pairs, ipairs, next = response, json, pairs, ipairs, next

local list = {type = "array", items = {type = "string", min = 1}, default = {}}
local map = {type = "map", values = {type = "string"}, default = {}}
local function ops(fields)
  return {type = "record", default = {}, fields = {headers = fields, body = fields}}
end

local function empty(t) return next(t) == nil end

local function plain(conf, part)
  local out = {}
  for _, step in ipairs({"remove", "rename", "replace", "add"}) do
    local copy = {}
    for k, x in pairs(conf[step][part]) do copy[k] = x end
    out[step] = copy
  end
  out.any = not (empty(out.remove) and empty(out.rename) and empty(out.replace) and empty(out.add))
  return out
end

return {
  description = "remove, rename, replace and add response headers and JSON body fields",
  priority = 800,
  schema = {
    remove = ops(list), rename = ops(map), replace = ops(map), add = ops(map),
    max_body = {type = "integer", default = 1048576, min = 0, description = "largest JSON body transformed"},
  },
  prepare = function(conf)
    return {headers = plain(conf, "headers"), body = plain(conf, "body"), max_body = conf.max_body}
  end,
  response = function(p, ctx)
    local h = p.headers
    if h.any then
      for _, name in ipairs(h.remove) do response.remove_header(name) end
      for from, to in pairs(h.rename) do
        local values = response.header_values(from)
        if #values > 0 then
          response.remove_header(from)
          for _, v in ipairs(values) do response.add_header(to, v) end
        end
      end
      for name, value in pairs(h.replace) do
        if response.header(name) ~= nil then response.set_header(name, value) end
      end
      for name, value in pairs(h.add) do
        if response.header(name) == nil then response.set_header(name, value) end
      end
    end
    local b = p.body
    if b.any and (response.header("Content-Type") or ""):find("json", 1, true) then
      local body = response.body(p.max_body)
      local ok, doc = pcall(json.decode, body or "")
      if body and ok and type(doc) == "table" then
        for _, name in ipairs(b.remove) do doc[name] = nil end
        for from, to in pairs(b.rename) do if doc[from] ~= nil then doc[to], doc[from] = doc[from], nil end end
        for name, value in pairs(b.replace) do if doc[name] ~= nil then doc[name] = value end end
        for name, value in pairs(b.add) do if doc[name] == nil then doc[name] = value end end
        response.set_body(json.encode(doc), p.max_body)
      end
    end
  end,
}
