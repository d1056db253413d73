-- rate-limiting: a token bucket per consumer, client IP, header value or route, in the
-- gateway's memory (local) or in Redis (exact across gateways). Answers carry RateLimit-*
-- headers; a refusal is 429 with Retry-After.
local request, redis_bucket = request, redis_bucket

local function key(conf, ctx)
  local by = conf.by
  if by == "consumer" then
    -- Requests no plugin authenticated are limited by address, as Kong does.
    local consumer = ctx.consumer
    if consumer ~= nil then return "c:" .. consumer end
    return "i:" .. request.client_ip()
  elseif by == "ip" then
    return "i:" .. (ctx.client_ip or request.client_ip())
  elseif by == "header" then
    return "h:" .. (request.header(conf.header) or "")
  end
  return "r"
end

return {
  description = "token buckets per consumer, IP, header or route; local or Redis; RateLimit headers",
  priority = 910,
  schema = {
    by = {type = "string", default = "consumer", one_of = {"consumer", "ip", "header", "route"}},
    header = {type = "string", min = 1, description = "the header whose value is the key (by: header)"},
    capacity = {type = "number", required = true, min = 1, max = 1e9, description = "requests a burst may hold"},
    rate = {type = "number", required = true, min = 0.000001, max = 1e9, description = "requests per second, refilled"},
    cost = {type = "number", default = 1, min = 0},
    store = {type = "string", min = 1, description = "local, or a server under redis: (default rate_limit.default_store)"},
    failure = {type = "string", one_of = {"open", "closed"}, description = "when Redis cannot answer (default: the route's)"},
    prefix = {type = "string", default = "rl:", description = "keys are prefix .. route .. by-key"},
  },
  prepare = function(conf)
    if conf.by == "header" and conf.header == nil then
      error("rate-limiting: by = header needs header = \"Name\"", 0)
    end
    return {
      by = conf.by, header = conf.header, prefix = conf.prefix,
      limiter = redis_bucket.limiter{capacity = conf.capacity, rate = conf.rate, cost = conf.cost, store = conf.store,
                                     failure = conf.failure},
    }
  end,
  access = function(p, ctx)
    redis_bucket.limit(p.prefix .. request.route() .. ":" .. key(p, ctx), p.limiter)
  end,
}
