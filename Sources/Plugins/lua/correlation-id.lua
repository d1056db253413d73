-- correlation-id: gives each request an id in a header (kept if the client sent one), for
-- tracing a request through services; optionally echoed on the response.
local request, response, crypto = request, response, crypto

return {
  description = "a request id in a header, generated when absent, echoed on the response",
  priority = 100001,
  schema = {
    header = {type = "string", default = "X-Correlation-Id", min = 1, max = 128},
    generator = {type = "string", default = "uuid", one_of = {"uuid", "request_id"},
                 description = "uuid (random, version 4) or request_id (the gateway's own id)"},
    echo_downstream = {type = "boolean", default = true, description = "send the id back on the response"},
  },
  access = function(conf, ctx)
    local id = request.header(conf.header)
    if id == nil or id == "" or #id > 200 then
      id = conf.generator == "uuid" and crypto.uuid() or request.id()
      request.set_header(conf.header, id)
    end
    ctx.correlation_id = id
    if conf.echo_downstream then response.set_header(conf.header, id) end
  end,
}
