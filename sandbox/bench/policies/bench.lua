-- The benchmark policy of ../shared/bench/POLICY.md: verify an HS256 token, take from a
-- token bucket per subject, rewrite the request, mark the response, count requests.
--
-- Until redis_bucket and metrics land (their own issues), the bucket and the counter are
-- plain Lua tables in the worker's state: the same work in kind, stated as such.
local CAPACITY, RATE = 1000000, 1000000
local buckets = {}
local counts = {}

local function take(key)
  local t = now()
  local b = buckets[key]
  if not b then
    b = {tokens = CAPACITY, ts = t}
    buckets[key] = b
  end
  b.tokens = math.min(CAPACITY, b.tokens + (t - b.ts) * RATE)
  b.ts = t
  if b.tokens < 1 then return false end
  b.tokens = b.tokens - 1
  return true
end

local JSON = {["Content-Type"] = "application/json"}

return {
  access = function(ctx)
    local token = (request.header("Authorization") or ""):match("^Bearer%s+(.+)$")
    local claims, reason = jwt.verify(token, "bench")
    if not claims then request.respond(401, json.encode({error = reason}), JSON) end
    if type(claims.sub) ~= "string" then request.respond(401, '{"error":"no subject"}', JSON) end
    if not take(claims.sub) then request.respond(429, '{"error":"rate limited"}', JSON) end
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
