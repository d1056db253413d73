describe("redirect and request-termination", function()
  it("redirects keeping the path and query", function()
    local res = harness.request{path = "/old/a/b?x=1"}
    assert.equals(308, res.status)
    assert.equals("https://new.example.com/old/a/b?x=1", res.headers["location"])
  end)
  it("answers for a route in maintenance", function()
    local res = harness.request{path = "/maintenance/x"}
    assert.equals(503, res.status)
    assert.equals("60", res.headers["retry-after"])
    assert.equals("back soon", json.decode(res.body).error)
    assert.is_nil(res.upstream)
  end)
end)
