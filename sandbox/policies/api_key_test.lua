-- Tests for api_key.lua: authentication by API key, and routing by header.
describe("api_key", function()
  local function get(headers)
    return harness.request{path = "/private/orders/7", headers = headers}
  end

  describe("without a valid key", function()
    it("answers 401 with a JSON error", function()
      local res = get({})
      assert.equals(401, res.status)
      assert.equals("application/json", res.headers["content-type"])
      assert.matches("API key", json.decode(res.body).error)
    end)

    it("says how to authenticate", function()
      assert.equals("ApiKey", get({}).headers["www-authenticate"])
    end)

    it("refuses an unknown key", function()
      assert.equals(401, get({["X-Api-Key"] = "guess"}).status)
    end)

    it("does not call the upstream", function()
      assert.is_nil(get({}).upstream)
    end)
  end)

  describe("with a valid key", function()
    local res
    before_each(function()
      harness.upstream("echo", function(req)
        return {status = 200, headers = {["Content-Type"] = "text/plain"}, body = "order 7"}
      end)
      res = get({["X-Api-Key"] = "sandbox-key"})
    end)

    it("passes the request on", function()
      assert.equals(200, res.status)
      assert.equals("order 7", res.body)
    end)

    it("tells the upstream who called", function()
      assert.equals("sandbox-user", res.upstream.headers["x-user"])
    end)

    it("keeps the key from the upstream", function()
      assert.is_nil(res.upstream.headers["x-api-key"])
    end)

    it("strips the route's prefix", function()
      assert.equals("/orders/7", res.upstream.path)
    end)

    it("goes to the echo upstream by default", function()
      assert.equals("echo", res.upstream.upstream)
    end)
  end)

  it("sends canary traffic to the canary upstream", function()
    local res = get({["X-Api-Key"] = "sandbox-key", ["X-Canary"] = "1"})
    assert.equals("canary", res.upstream.upstream)
  end)

  it("cannot be fooled by a client's own X-User", function()
    local res = get({["X-Api-Key"] = "sandbox-key", ["X-User"] = "admin"})
    assert.same({"sandbox-user"}, {res.upstream.headers["x-user"]})
  end)

  describe("metrics", function()
    it("counts refused and allowed calls", function()
      get({})
      get({["X-Api-Key"] = "guess"})
      get({["X-Api-Key"] = "sandbox-key"})
      assert.equals(2, harness.metric("sandbox_api_calls_total", {result = "refused"}))
      assert.equals(1, harness.metric("sandbox_api_calls_total", {result = "allowed"}))
    end)

    it("starts each test from zero, as the gateway's own counters do", function()
      assert.is_nil(harness.metric("sandbox_api_calls_total", {result = "refused"}))
      get({})
      assert.equals(1, harness.metric("moongate_requests_total", {route = "private", method = "GET", status = "401"}))
      local count = harness.metric("moongate_request_duration_seconds", {route = "private"})
      assert.equals(1, count)
    end)
  end)
end)
