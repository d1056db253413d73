-- key-auth: an API key from a header (or query argument) checked against a key set of the
-- config (`apikeys:`, stored as SHA-256 digests); the consumer goes to ctx.consumer and to a
-- header for the upstream. The key itself is removed before the request goes on.
local request, apikey, json = request, apikey, json

return {
  description = "API keys from a header or query argument, checked against an apikeys set",
  priority = 1250,
  schema = {
    set = {type = "string", required = true, description = "the apikeys set to look keys up in"},
    header = {type = "string", default = "X-Api-Key", min = 1},
    query = {type = "string", min = 1, description = "also accept the key in this query argument"},
    hide_credentials = {type = "boolean", default = true, description = "remove the key before proxying"},
    consumer_header = {type = "string", default = "X-Consumer", min = 1},
    anonymous = {type = "string", min = 1, description = "consumer for requests without a key (else 401)"},
  },
  access = function(conf, ctx)
    local key = request.header(conf.header)
    local from_query = false
    if key == nil and conf.query then
      key = request.query_arg(conf.query)
      from_query = key ~= nil
    end
    if key == nil and conf.anonymous then
      ctx.consumer = conf.anonymous
      request.set_header(conf.consumer_header, conf.anonymous)
      return
    end
    local who, reason = apikey.verify(key, conf.set)
    if not who then
      request.respond(401, json.encode({error = reason == "missing" and "no API key" or "invalid API key"}),
        {["Content-Type"] = "application/json", ["WWW-Authenticate"] = 'Key realm="moongate"'})
    end
    ctx.consumer = who.consumer
    ctx.scopes = who.scopes
    if conf.hide_credentials then
      request.remove_header(conf.header)
    end
    request.set_header(conf.consumer_header, who.consumer)
  end,
}
