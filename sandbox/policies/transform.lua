-- Rewriting on the way in and on the way out.
--   curl 'http://127.0.0.1:8080/v1/users/42?debug=1'
return {
  access = function(ctx)
    -- /v1/users/42 reaches the upstream as /users/42, without the debug flag.
    ctx.version = request.path():match("^/(v%d+)/")
    request.set_path(request.path():gsub("^/v%d+", "", 1))
    local args = request.query_args()
    args.debug = nil
    request.set_query(args)
  end,
  response = function(ctx)
    -- Wrap the upstream's JSON in an envelope.
    local body = response.body()
    local doc = json.decode(body) or {raw = body}
    response.set_body(json.encode({version = ctx.version, data = doc}))
    response.set_header("Content-Type", "application/json")
    response.set_header("X-Gateway", "moongate")
  end,
  log = function(ctx)
    log.info("served", request.path(), "status", response.status())
  end,
}
