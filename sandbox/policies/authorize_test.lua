-- Tests for authorize.lua: the `authz` sub-request is answered by a stub, as the upstream is.
describe("authorize", function()
  local function get(headers)
    return harness.request{path = "/orders/7", headers = headers}
  end
  local bearer = {Authorization = "Bearer demo"}

  it("asks authz with the original method, path and credentials", function()
    local res = get(bearer)
    local check = res.upstreams[1]
    assert.equals("authz", check.upstream)
    assert.equals("POST", check.method)
    assert.equals("/check", check.path)
    assert.equals("GET", check.headers["x-original-method"])
    assert.equals("/orders/7", check.headers["x-original-path"])
    assert.equals("Bearer demo", check.headers["authorization"])
  end)

  it("lets an allowed request through, naming the user and dropping the credentials", function()
    harness.upstream("authz", function(req)
      return {status = 200, headers = {["Content-Type"] = "application/json"}, body = '{"user":"ada"}'}
    end)
    local res = get(bearer)
    assert.equals(200, res.status)
    assert.equals("echo", res.upstream.upstream)
    assert.equals("ada", res.upstream.headers["x-user"])
    assert.is_nil(res.upstream.headers["authorization"])
  end)

  it("refuses with 403 when authz says no, and never calls the upstream", function()
    harness.upstream("authz", function(req) return {status = 403} end)
    local res = get(bearer)
    assert.equals(403, res.status)
    assert.equals("authz", res.upstream.upstream)   -- the last call was the check
    assert.equals(1, #res.upstreams)
  end)

  it("fails closed when authz does not answer in time", function()
    harness.upstream("authz", function(req) return nil, "timeout" end)
    local res = get(bearer)
    assert.equals(503, res.status)
    assert.equals("timeout", json.decode(res.body).reason)
  end)

  it("fails closed when authz answers with an error", function()
    harness.upstream("authz", function(req) return {status = 500} end)
    assert.equals(503, get(bearer).status)
  end)

  it("asks for credentials before calling authz", function()
    local res = get({})
    assert.equals(401, res.status)
    assert.equals(0, #res.upstreams)
  end)
end)
