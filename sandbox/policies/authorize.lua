-- External authorization: before a request goes on, ask the `authz` service whether this
-- caller may do this, and wait for its answer without blocking the gateway (upstream.call).
-- The service sees the original method, path and credentials; a 200 allows (its JSON may
-- name the user), 401/403 refuse, anything else or no answer in 200 ms fails closed.
--   curl -H 'Authorization: Bearer demo' http://127.0.0.1:8080/orders/7
-- In the sandbox `authz` is the demo upstream, which allows everything.
local function refuse(status, message, reason)
  request.respond(status, json.encode({error = message, reason = reason}),
                  {["Content-Type"] = "application/json"})
end

return {
  access = function(ctx)
    local credentials = request.header("Authorization")
    if not credentials then refuse(401, "credentials required") end
    local res, err = upstream.call("authz", {
      method = "POST",
      path = "/check",
      headers = {
        ["X-Original-Method"] = request.method(),
        ["X-Original-Path"] = request.path(),
        ["Authorization"] = credentials,
      },
      timeout = 0.2,
    })
    if not res then refuse(503, "authorization unavailable", err) end
    if res.status == 401 or res.status == 403 then refuse(403, "not allowed") end
    if res.status ~= 200 then refuse(503, "authorization unavailable", "status " .. res.status) end
    local ok, decision = pcall(json.decode, res.body)
    local user = ok and type(decision) == "table" and decision.user
    if type(user) == "string" then request.set_header("X-User", user) end
    -- The upstream gets the decision, never the caller's credentials.
    request.remove_header("Authorization")
  end,
}
