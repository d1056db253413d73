-- Authentication by API key, and routing by header.
--   curl -H 'X-Api-Key: sandbox-key' http://127.0.0.1:8080/private/anything
--   curl -H 'X-Api-Key: sandbox-key' -H 'X-Canary: 1' http://127.0.0.1:8080/private/anything
local keys = {
  ["sandbox-key"] = "sandbox-user",
}

-- A metric of the policy's own, on the admin /metrics page (declared once, at load).
local calls = metrics.counter{
  name = "sandbox_api_calls_total", help = "Calls to /private/, by result.", labels = {"result"},
}

return {
  access = function(ctx)
    local user = keys[request.header("X-Api-Key") or ""]
    if not user then
      calls:inc(1, "refused")
      request.respond(401, json.encode({error = "missing or unknown API key"}),
                      {["Content-Type"] = "application/json", ["WWW-Authenticate"] = "ApiKey"})
    end
    calls:inc(1, "allowed")
    -- The upstream learns who called; the key itself stays here.
    request.set_header("X-User", user)
    request.remove_header("X-Api-Key")
    if request.header("X-Canary") == "1" then
      request.set_upstream("canary")
    end
  end,
}
