-- request-transformer: removes, renames, replaces (when present) and adds (when absent)
-- request headers, query arguments and JSON body fields, in that order.
local request, json, pairs, ipairs, next = request, json, pairs, ipairs, next

local function ops(fields)
  return {
    type = "record", default = {},
    fields = {
      headers = fields, querystring = fields, body = fields,
    },
  }
end
local list = {type = "array", items = {type = "string", min = 1}, default = {}}
local map = {type = "map", values = {type = "string"}, default = {}}

local function empty(t) return next(t) == nil end

local function plain(conf, part)
  local out = {}
  for _, step in ipairs({"remove", "rename", "replace", "add"}) do
    local v = conf[step][part]
    local copy = {}
    for k, x in pairs(v) do copy[k] = x end
    out[step] = copy
  end
  out.any = not (empty(out.remove) and empty(out.rename) and empty(out.replace) and empty(out.add))
  return out
end

-- Applies the steps to a table of name -> value (query arguments, body fields).
local function apply(t, s)
  for _, name in ipairs(s.remove) do t[name] = nil end
  for from, to in pairs(s.rename) do
    if t[from] ~= nil then t[to], t[from] = t[from], nil end
  end
  for name, value in pairs(s.replace) do
    if t[name] ~= nil then t[name] = value end
  end
  for name, value in pairs(s.add) do
    if t[name] == nil then t[name] = value end
  end
end

return {
  description = "remove, rename, replace and add request headers, query arguments and JSON body fields",
  priority = 801,
  schema = {
    remove = ops(list), rename = ops(map), replace = ops(map), add = ops(map),
    max_body = {type = "integer", default = 1048576, min = 0, description = "largest JSON body transformed"},
  },
  prepare = function(conf)
    return {headers = plain(conf, "headers"), query = plain(conf, "querystring"), body = plain(conf, "body"),
            max_body = conf.max_body}
  end,
  access = function(p, ctx)
    local h = p.headers
    if h.any then
      for _, name in ipairs(h.remove) do request.remove_header(name) end
      for from, to in pairs(h.rename) do
        local values = request.header_values(from)
        if #values > 0 then
          request.remove_header(from)
          for _, v in ipairs(values) do request.add_header(to, v) end
        end
      end
      for name, value in pairs(h.replace) do
        if request.header(name) ~= nil then request.set_header(name, value) end
      end
      for name, value in pairs(h.add) do
        if request.header(name) == nil then request.set_header(name, value) end
      end
    end
    if p.query.any then
      local args = request.query_args()
      apply(args, p.query)
      request.set_query(next(args) and args or nil)
    end
    if p.body.any then
      local ctype = request.header("Content-Type") or ""
      if ctype:find("json", 1, true) then
        local body = request.body(p.max_body)
        local ok, doc = pcall(json.decode, body or "")
        if body and ok and type(doc) == "table" then
          apply(doc, p.body)
          request.set_body(json.encode(doc), p.max_body)
        end
      end
    end
  end,
}
