-- jwt-auth: a JWT from the Authorization header (Bearer), a cookie or a query argument,
-- verified against a keyset of the config; chosen claims go to headers, the consumer claim
-- to ctx.consumer.
local request, jwt, json, string, table = request, jwt, json, string, table

local function token(conf)
  local auth = request.header(conf.header)
  if auth then
    local t = auth:match("^[Bb]earer%s+(%S+)%s*$")
    if t then return t end
  end
  if conf.cookie then
    local cookies = request.header("Cookie")
    if cookies then
      for name, value in string.gmatch(cookies, "([^=;%s]+)=([^;]*)") do
        if name == conf.cookie then return value end
      end
    end
  end
  if conf.query then return request.query_arg(conf.query) end
  return nil
end

return {
  description = "JWT bearer tokens verified against a keyset; claims to headers and ctx.consumer",
  priority = 1450,
  schema = {
    keyset = {type = "string", required = true, description = "the keysets entry to verify against"},
    header = {type = "string", default = "Authorization"},
    cookie = {type = "string", min = 1, description = "also look for the token in this cookie"},
    query = {type = "string", min = 1, description = "also look for the token in this query argument"},
    consumer_claim = {type = "string", default = "sub"},
    claims_to_headers = {type = "map", values = {type = "string"}, default = {},
                         description = "claim name -> request header for the upstream"},
    issuer = {type = "string", description = "overrides the keyset's issuer"},
    audience = {type = "array", items = {type = "string"}, description = "overrides the keyset's audience"},
    required_claims = {type = "array", items = {type = "string"}, default = {}},
    hide_credentials = {type = "boolean", default = false, description = "remove the token before proxying"},
    anonymous = {type = "string", min = 1, description = "consumer for requests without a token (else 401)"},
  },
  prepare = function(conf)
    local options = {required = conf.required_claims}
    if conf.issuer then options.issuer = conf.issuer end
    if conf.audience then options.audience = conf.audience end
    local headers = {}
    for claim, header in pairs(conf.claims_to_headers) do headers[#headers + 1] = {claim, header} end
    return {
      keyset = conf.keyset, header = conf.header, cookie = conf.cookie, query = conf.query,
      consumer_claim = conf.consumer_claim, headers = headers, options = options,
      hide = conf.hide_credentials, anonymous = conf.anonymous,
    }
  end,
  access = function(p, ctx)
    local t = token(p)
    if t == nil and p.anonymous then
      ctx.consumer = p.anonymous
      return
    end
    local claims, reason = jwt.verify(t, p.keyset, p.options)
    if not claims then
      request.respond(401, json.encode({error = reason == "malformed" and t == nil and "no token" or "invalid token", reason = reason}),
        {["Content-Type"] = "application/json", ["WWW-Authenticate"] = 'Bearer error="invalid_token"'})
    end
    ctx.claims = claims
    local consumer = claims[p.consumer_claim]
    if type(consumer) == "string" then ctx.consumer = consumer end
    for _, pair in ipairs(p.headers) do
      local value = claims[pair[1]]
      if type(value) == "table" then value = table.concat(value, " ") end
      if value ~= nil then request.set_header(pair[2], tostring(value)) end
    end
    if p.hide then request.remove_header(p.header) end
  end,
}
