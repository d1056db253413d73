-- Tests for router.lua, the listener's router, and for the routes it falls back to.
describe("router", function()
  it("routes by header to the hello route", function()
    local res = harness.request{path = "/anything", headers = {["X-Route"] = "hello"}}
    assert.equals(200, res.status)
    assert.equals("world", json.decode(res.body).hello)
  end)

  it("leaves other requests to the routes' match", function()
    local res = harness.request{path = "/echo/status"}
    assert.equals("/status", res.upstream.path)
  end)

  it("sends unknown paths to the default route", function()
    local res = harness.request{path = "/elsewhere"}
    assert.equals("/elsewhere", res.upstream.path)
  end)

  it("keeps a request's method and body", function()
    local res = harness.request{method = "POST", path = "/upload", body = "payload"}
    assert.equals("POST", res.upstream.method)
    assert.equals("payload", res.upstream.body)
  end)
end)
