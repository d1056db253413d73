-- request-termination: answers every request itself (maintenance pages, retired routes).
local request, json = request, json

return {
  description = "answers with a fixed status and body (maintenance, retired routes)",
  priority = 2,
  schema = {
    status = {type = "integer", default = 503, min = 200, max = 599},
    message = {type = "string", default = "service unavailable", description = "sent as {\"error\": message}"},
    body = {type = "string", description = "sent as is, in place of the JSON message"},
    content_type = {type = "string", default = "application/json"},
    retry_after = {type = "integer", min = 0, description = "seconds, for a Retry-After header"},
  },
  prepare = function(conf)
    local body = conf.body
    if body == nil then body = json.encode({error = conf.message}) end
    local headers = {["Content-Type"] = conf.content_type}
    if conf.retry_after then headers["Retry-After"] = tostring(conf.retry_after) end
    return {status = conf.status, body = body, headers = headers}
  end,
  access = function(p, ctx)
    request.respond(p.status, p.body, p.headers)
  end,
}
