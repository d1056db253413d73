describe("correlation-id (global)", function()
  it("gives a request without one a UUID, seen by the upstream and echoed", function()
    local res = harness.request{path = "/plain"}
    local id = res.upstream.headers["x-correlation-id"]
    assert.matches("^%x+%-%x+%-4%x+%-[89ab]%x+%-%x+$", id)
    assert.equals(id, res.headers["x-correlation-id"])
  end)
  it("keeps the client's", function()
    local res = harness.request{path = "/plain", headers = {["X-Correlation-Id"] = "abc-1"}}
    assert.equals("abc-1", res.upstream.headers["x-correlation-id"])
    assert.equals("abc-1", res.headers["x-correlation-id"])
  end)
  it("goes on early answers too", function()
    local res = harness.request{path = "/maintenance/"}
    assert.equals(503, res.status)
    assert.not_nil(res.headers["x-correlation-id"])
  end)
end)
