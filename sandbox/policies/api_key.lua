-- Authentication by API key, and routing by header.
--   curl -H 'X-Api-Key: sandbox-key' http://127.0.0.1:8080/private/anything
--   curl -H 'X-Api-Key: sandbox-key' -H 'X-Canary: 1' http://127.0.0.1:8080/private/anything
local keys = {
  ["sandbox-key"] = "sandbox-user",
}

return {
  access = function(ctx)
    local user = keys[request.header("X-Api-Key") or ""]
    if not user then
      request.respond(401, json.encode({error = "missing or unknown API key"}),
                      {["Content-Type"] = "application/json", ["WWW-Authenticate"] = "ApiKey"})
    end
    -- The upstream learns who called; the key itself stays here.
    request.set_header("X-User", user)
    request.remove_header("X-Api-Key")
    if request.header("X-Canary") == "1" then
      request.set_upstream("canary")
    end
  end,
}
