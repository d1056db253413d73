describe("request-transformer and response-transformer", function()
  it("changes headers, query and JSON body on the way in", function()
    harness.upstream("echo", function(req) return {status = 200, headers = {["Content-Type"] = "application/json", Server = "x"}, body = '{"secret":1,"ok":true}'} end)
    local res = harness.request{method = "POST", path = "/transform/x?debug=1&q=a",
      headers = {["X-Debug"] = "1", ["X-Old"] = "o", ["X-Mode"] = "fast", ["Content-Type"] = "application/json"},
      body = '{"user":"ann","password":"p"}'}
    local up = res.upstream
    assert.is_nil(up.headers["x-debug"])
    assert.equals("o", up.headers["x-new"])
    assert.is_nil(up.headers["x-old"])
    assert.equals("safe", up.headers["x-mode"])
    assert.equals("1", up.headers["x-added"])
    assert.equals("/transform/x?lang=en&q=a", up.path)
    assert.same({username = "ann", source = "gateway"}, json.decode(up.body))
    assert.is_nil(res.headers["server"])
    assert.equals("moongate", res.headers["x-served-by"])
    assert.same({ok = true, version = "2"}, json.decode(res.body))
  end)
end)
