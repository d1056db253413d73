-- oauth2-introspection: opaque bearer tokens checked with an introspection endpoint of the
-- config (RFC 7662, answers cached per worker); required scopes; claims to headers.
local request, oauth2, json, string = request, oauth2, json, string

return {
  description = "opaque OAuth2 tokens checked by RFC 7662 introspection; scopes; claims to headers",
  priority = 1700,
  schema = {
    server = {type = "string", required = true, description = "the introspection entry to ask"},
    header = {type = "string", default = "Authorization"},
    scopes = {type = "array", items = {type = "string", min = 1}, default = {}, description = "all required"},
    consumer_claim = {type = "string", default = "sub", description = "sub, client_id or username"},
    claims_to_headers = {type = "map", values = {type = "string"}, default = {}},
    hide_credentials = {type = "boolean", default = false},
  },
  prepare = function(conf)
    local headers = {}
    for claim, header in pairs(conf.claims_to_headers) do headers[#headers + 1] = {claim, header} end
    local scopes = {}
    for i, s in ipairs(conf.scopes) do scopes[i] = s end
    return {server = conf.server, header = conf.header, scopes = scopes, consumer_claim = conf.consumer_claim,
            headers = headers, hide = conf.hide_credentials}
  end,
  access = function(p, ctx)
    local token = (request.header(p.header) or ""):match("^[Bb]earer%s+(%S+)%s*$")
    local answer, reason = oauth2.introspect(token, p.server)
    if not answer then
      local status = (reason == "timeout" or reason == "unavailable" or reason == "bad_response") and 503 or 401
      request.respond(status, json.encode({error = status == 401 and "invalid token" or "token check unavailable", reason = reason}),
        {["Content-Type"] = "application/json", ["WWW-Authenticate"] = 'Bearer error="invalid_token"'})
    end
    if #p.scopes > 0 then
      local have = {}
      for s in string.gmatch(answer.scope or "", "%S+") do have[s] = true end
      for _, s in ipairs(p.scopes) do
        if not have[s] then
          request.respond(403, json.encode({error = "insufficient scope", scope = s}),
            {["Content-Type"] = "application/json", ["WWW-Authenticate"] = 'Bearer error="insufficient_scope"'})
        end
      end
    end
    ctx.claims = answer
    local consumer = answer[p.consumer_claim]
    if type(consumer) == "string" then ctx.consumer = consumer end
    for _, pair in ipairs(p.headers) do
      local value = answer[pair[1]]
      if value ~= nil and type(value) ~= "table" then request.set_header(pair[2], tostring(value)) end
    end
    if p.hide then request.remove_header(p.header) end
  end,
}
