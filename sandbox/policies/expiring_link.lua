-- Links that expire: /download/<file>?expires=<unix time>. Time comes from now(), the
-- runtime's clock, so tests can move it (harness.clock).
--   curl -i "http://127.0.0.1:8080/download/report.pdf?expires=$(( $(date +%s) + 60 ))"
return {
  access = function(ctx)
    local expires = tonumber(request.query_arg("expires"))
    if not expires then
      request.respond(400, json.encode({error = "missing expires"}), {["Content-Type"] = "application/json"})
    end
    if now() > expires then
      request.respond(410, json.encode({error = "link expired"}), {["Content-Type"] = "application/json"})
    end
    request.set_header("X-Link-Seconds-Left", math.floor(expires - now()))
  end,
}
