-- Rate limiting with redis_bucket: each client (its API key, else its address) has a
-- bucket of 5 requests that refills at 1 a second; writes cost 2. `limit` sets the
-- RateLimit-* headers and answers 429 (JSON, Retry-After) when the bucket is empty.
local BUCKET = {capacity = 5, rate = 1}
local WRITE = {capacity = 5, rate = 1, cost = 2}

return {
  access = function(ctx)
    local client = request.header("X-Api-Key") or request.client_ip()
    local method = request.method()
    redis_bucket.limit("sandbox:" .. client, (method == "GET" or method == "HEAD") and BUCKET or WRITE)
  end,
}
