-- request-size-limiting: refuses bodies over a size with 413, by Content-Length before any
-- byte is read, or (chunked bodies) as they are read.
local request, json = request, json

return {
  description = "413 for request bodies over a size",
  priority = 951,
  schema = {
    max_bytes = {type = "integer", default = 1048576, min = 0, description = "largest body allowed"},
    require_content_length = {type = "boolean", default = false, description = "refuse chunked bodies (411)"},
  },
  access = function(conf, ctx)
    local length = request.header("Content-Length")
    if length ~= nil then
      local n = tonumber(length)
      if n and n > conf.max_bytes then
        request.respond(413, json.encode({error = "request body larger than " .. conf.max_bytes .. " bytes"}),
          {["Content-Type"] = "application/json"})
      end
      return
    end
    local te = request.header("Transfer-Encoding")
    if te == nil then return end
    if conf.require_content_length then
      request.respond(411, json.encode({error = "Content-Length required"}), {["Content-Type"] = "application/json"})
    end
    local body, err = request.body(conf.max_bytes)
    if body == nil then
      request.respond(413, json.encode({error = "request body larger than " .. conf.max_bytes .. " bytes"}),
        {["Content-Type"] = "application/json"})
    end
  end,
}
