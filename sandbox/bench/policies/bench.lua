-- The benchmark policy of ../shared/bench/POLICY.md: verify an HS256 token, take from a
-- token bucket per subject (in the gateway's memory on /api/, in Redis on /rapi/), rewrite
-- the request, mark the response, count requests.
--
-- Until metrics lands (its own issue), the counter is a plain Lua table in the worker's
-- state: the same work in kind, stated as such.
local LOCAL = {capacity = 1000000, rate = 1000000}
local REDIS = {capacity = 1000000, rate = 1000000, store = "bench"}
local counts = {}

local JSON = {["Content-Type"] = "application/json"}

return {
  access = function(ctx)
    local token = (request.header("Authorization") or ""):match("^Bearer%s+(.+)$")
    local claims, reason = jwt.verify(token, "bench")
    if not claims then request.respond(401, json.encode({error = reason}), JSON) end
    if type(claims.sub) ~= "string" then request.respond(401, '{"error":"no subject"}', JSON) end
    -- Redis unreachable: the route's failure mode (open, the default) lets the request through.
    local allowed = redis_bucket.take(claims.sub, request.route() == "rapi" and REDIS or LOCAL)
    if not allowed then request.respond(429, '{"error":"rate limited"}', JSON) end
    request.set_header("X-User", claims.sub)
    request.remove_header("X-Debug")
  end,
  response = function(ctx)
    response.set_header("X-Gateway", "moongate")
  end,
  log = function(ctx)
    local key = request.route() .. " " .. response.status()
    counts[key] = (counts[key] or 0) + 1
  end,
}
