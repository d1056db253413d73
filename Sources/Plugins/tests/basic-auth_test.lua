describe("basic-auth", function()
  local function get(user, password)
    return harness.request{path = "/basic/x", headers = {Authorization = "Basic " .. crypto.b64encode(user .. ":" .. password)}}
  end
  it("passes the right password and hides the credentials", function()
    local res = get("ann", "s3cret")
    assert.equals(200, res.status)
    assert.equals("ann", res.upstream.headers["x-consumer"])
    assert.is_nil(res.upstream.headers["authorization"])
    assert.equals(200, get("ann", "s3cret").status)   -- verified once, then from the state's cache
  end)
  it("refuses a wrong password, an unknown user and no credentials", function()
    assert.equals(401, get("ann", "wrong").status)
    assert.equals(401, get("bob", "s3cret").status)
    local res = harness.request{path = "/basic/x"}
    assert.equals(401, res.status)
    assert.equals('Basic realm="moongate"', res.headers["www-authenticate"])
  end)
end)
