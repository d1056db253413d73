-- An early answer: the gateway replies itself, no upstream involved.
--   curl 'http://127.0.0.1:8080/hello?name=moon'
return {
  access = function(ctx)
    local name = request.query_arg("name") or "world"
    request.respond(200, json.encode({hello = name, request_id = request.id()}),
                    {["Content-Type"] = "application/json"})
  end,
}
