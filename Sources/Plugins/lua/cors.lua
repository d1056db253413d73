-- cors: Cross-Origin Resource Sharing. Preflights (OPTIONS with
-- Access-Control-Request-Method) are answered by the gateway; actual requests from an allowed
-- origin get the Access-Control-Allow-* headers on their response, whatever answers them.
local request, response, string, table = request, response, string, table

local function prepare(conf)
  local exact, star = {}, false
  for _, origin in ipairs(conf.origins) do
    if origin == "*" then star = true else exact[origin:lower()] = true end
  end
  return {
    exact = exact, star = star,
    methods = table.concat(conf.methods, ", "),
    headers = #conf.headers > 0 and table.concat(conf.headers, ", ") or nil,
    exposed = #conf.exposed_headers > 0 and table.concat(conf.exposed_headers, ", ") or nil,
    credentials = conf.credentials,
    max_age = conf.max_age and tostring(conf.max_age) or nil,
    preflight_continue = conf.preflight_continue,
  }
end

-- The value for Access-Control-Allow-Origin, or nil when the origin is not allowed.
local function allow(p, origin)
  if p.exact[origin:lower()] then return origin end
  if p.star then
    -- "*" cannot be used with credentials: the origin is echoed instead (and Vary says so).
    return p.credentials and origin or "*"
  end
  return nil
end

return {
  description = "CORS: preflights answered by the gateway, Access-Control-* on actual responses",
  priority = 2000,
  schema = {
    origins = {type = "array", items = {type = "string", min = 1}, default = {"*"},
               description = "allowed origins (scheme://host[:port]) or \"*\""},
    methods = {type = "array", items = {type = "string", min = 1},
               default = {"GET", "HEAD", "PUT", "PATCH", "POST", "DELETE", "OPTIONS"}},
    headers = {type = "array", items = {type = "string", min = 1}, default = {},
               description = "allowed request headers; empty: those the preflight asks for"},
    exposed_headers = {type = "array", items = {type = "string", min = 1}, default = {}},
    credentials = {type = "boolean", default = false},
    max_age = {type = "integer", min = 0, max = 86400, description = "seconds a preflight may be cached"},
    preflight_continue = {type = "boolean", default = false, description = "pass preflights to the upstream"},
  },
  prepare = prepare,
  access = function(p, ctx)
    local origin = request.header("Origin")
    if origin == nil then return end
    local allowed = allow(p, origin)
    if request.method() == "OPTIONS" and request.header("Access-Control-Request-Method") and not p.preflight_continue then
      local headers = {["Vary"] = "Origin"}
      if allowed then
        headers["Access-Control-Allow-Origin"] = allowed
        headers["Access-Control-Allow-Methods"] = p.methods
        local asked = p.headers or request.header("Access-Control-Request-Headers")
        if asked then headers["Access-Control-Allow-Headers"] = asked end
        if p.credentials then headers["Access-Control-Allow-Credentials"] = "true" end
        if p.max_age then headers["Access-Control-Max-Age"] = p.max_age end
      end
      request.respond(204, nil, headers)
    end
    if allowed then
      response.set_header("Access-Control-Allow-Origin", allowed)
      if allowed ~= "*" then response.add_header("Vary", "Origin") end
      if p.credentials then response.set_header("Access-Control-Allow-Credentials", "true") end
      if p.exposed then response.set_header("Access-Control-Expose-Headers", p.exposed) end
    end
  end,
}
