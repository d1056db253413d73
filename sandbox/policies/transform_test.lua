-- Tests for transform.lua: rewriting the request, wrapping the response.
describe("transform", function()
  before_each(function()
    harness.upstream("echo", function(req)
      return {status = 200, headers = {["Content-Type"] = "application/json"},
              body = json.encode({path = req.path})}
    end)
  end)

  it("drops the version from the path", function()
    local res = harness.request{path = "/v1/users/42"}
    assert.equals("/users/42", res.upstream.path)
  end)

  it("drops the debug flag and keeps other arguments", function()
    local res = harness.request{path = "/v1/users?debug=1&page=2"}
    assert.equals("/users?page=2", res.upstream.path)
  end)

  it("wraps the upstream's answer in an envelope", function()
    local doc = json.decode(harness.request{path = "/v1/users/42"}.body)
    assert.equals("v1", doc.version)
    assert.same({path = "/users/42"}, doc.data)
  end)

  it("keeps a body that is not JSON", function()
    harness.upstream("echo", function() return {status = 200, body = "plain"} end)
    local doc = json.decode(harness.request{path = "/v1/text"}.body)
    assert.same({raw = "plain"}, doc.data)
  end)

  it("sends the new body with its own length", function()
    local res = harness.request{path = "/v1/users/42"}
    assert.equals(tostring(#res.body), res.headers["content-length"])
    assert.equals("application/json", res.headers["content-type"])
  end)

  it("marks the response", function()
    assert.equals("moongate", harness.request{path = "/v1/x"}.headers["x-gateway"])
  end)

  it("keeps the upstream's status", function()
    harness.upstream("echo", function() return {status = 404, body = "{}"} end)
    assert.equals(404, harness.request{path = "/v1/missing"}.status)
  end)

  it("logs each response with its status", function()
    harness.request{path = "/v1/users/42"}
    local logs = harness.logs()
    assert.equals(1, #logs)
    assert.equals("served /users/42 status 200", logs[1].message)
    assert.matches("transform%.lua:%d+$", logs[1].script)
  end)
end)
