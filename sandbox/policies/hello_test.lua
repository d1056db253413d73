-- Tests for hello.lua: the gateway answers by itself.
describe("hello", function()
  it("greets the world by default", function()
    local res = harness.request{path = "/hello"}
    assert.equals(200, res.status)
    assert.equals("application/json", res.headers["content-type"])
    assert.equals("world", json.decode(res.body).hello)
  end)

  it("greets by name", function()
    local res = harness.request{path = "/hello?name=moon"}
    assert.equals("moon", json.decode(res.body).hello)
  end)

  it("never calls the upstream", function()
    local res = harness.request{path = "/hello"}
    assert.is_nil(res.upstream)
  end)

  it("returns the request id it was given", function()
    local res = harness.request{path = "/hello", headers = {["X-Request-Id"] = "abc-123"}}
    assert.equals("abc-123", json.decode(res.body).request_id)
    assert.equals("abc-123", res.headers["x-request-id"])
  end)

  it("writes one access-log line per request", function()
    harness.request{path = "/hello?name=log"}
    local lines = harness.access_log()
    assert.equals(1, #lines)
    assert.equals(200, lines[1].status)
    assert.equals("/hello?name=log", lines[1].path)
  end)
end)
