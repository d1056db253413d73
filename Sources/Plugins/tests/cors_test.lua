describe("cors", function()
  local origin = "https://app.example.com"
  it("answers an allowed preflight itself", function()
    local res = harness.request{method = "OPTIONS", path = "/cors/x",
      headers = {Origin = origin, ["Access-Control-Request-Method"] = "POST"}}
    assert.equals(204, res.status)
    assert.is_nil(res.upstream)
    assert.equals(origin, res.headers["access-control-allow-origin"])
    assert.equals("GET, POST", res.headers["access-control-allow-methods"])
    assert.equals("X-Token", res.headers["access-control-allow-headers"])
    assert.equals("true", res.headers["access-control-allow-credentials"])
    assert.equals("600", res.headers["access-control-max-age"])
  end)
  it("gives a preflight from another origin no permission", function()
    local res = harness.request{method = "OPTIONS", path = "/cors/x",
      headers = {Origin = "https://evil.example", ["Access-Control-Request-Method"] = "POST"}}
    assert.equals(204, res.status)
    assert.is_nil(res.headers["access-control-allow-origin"])
  end)
  it("adds the headers to an actual request's response", function()
    local res = harness.request{path = "/cors/x", headers = {Origin = origin}}
    assert.equals(200, res.status)
    assert.equals(origin, res.headers["access-control-allow-origin"])
    assert.equals("X-Total", res.headers["access-control-expose-headers"])
    assert.equals("Origin", res.headers["vary"])
  end)
  it("leaves requests without Origin alone", function()
    assert.is_nil(harness.request{path = "/cors/x"}.headers["access-control-allow-origin"])
  end)
end)
