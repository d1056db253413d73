describe("session", function()
  local function cookie_of(res)
    local set = res.headers["set-cookie"]
    if type(set) == "table" then set = set[#set] end
    return set and set:match("^moongate_session=([^;]*)"), set
  end
  local function login()
    harness.upstream("echo", function(req)
      if req.path == "/app/login" then return {status = 200, headers = {["X-Session-Login"] = "ann"}} end
      return {status = 200}
    end)
    return cookie_of(harness.request{method = "POST", path = "/app/login"})
  end
  local function get(value)
    return harness.request{path = "/app/me", headers = {Cookie = "moongate_session=" .. value}}
  end

  it("creates a session on login, with a signed, HttpOnly, Secure, SameSite cookie", function()
    local value, set = login()
    assert.matches("^[%w_-]+%.[%w_-]+$", value)
    assert.matches("HttpOnly", set)
    assert.matches("Secure", set)
    assert.matches("SameSite=Lax", set)
    assert.matches("Max%-Age=300", set)
  end)
  it("reads it back: the upstream learns the subject", function()
    local value = login()
    local res = get(value)
    assert.equals("ann", res.upstream.headers["x-session-subject"])
  end)
  it("does not let the client claim a subject", function()
    local res = harness.request{path = "/app/me", headers = {["X-Session-Subject"] = "root"}}
    assert.is_nil(res.upstream.headers["x-session-subject"])
  end)
  it("refuses a forged cookie and clears it", function()
    local value = login()
    local id = value:match("^([^.]+)")
    local res = get(id .. ".AAAA" .. ("A"):rep(39))
    assert.is_nil(res.upstream.headers["x-session-subject"])
    local _, set = cookie_of(res)
    assert.matches("Max%-Age=0", set)
  end)
  it("expires after the idle timeout", function()
    local value = login()
    harness.clock.advance(30)
    assert.equals("ann", get(value).upstream.headers["x-session-subject"])
    harness.clock.advance(61)
    assert.is_nil(get(value).upstream.headers["x-session-subject"])
  end)
  it("expires at the absolute timeout however active", function()
    local value = login()
    for _ = 1, 6 do
      harness.clock.advance(50)
      get(value)
    end
    assert.is_nil(get(value).upstream.headers["x-session-subject"])
  end)
  it("rotates the id on a new login", function()
    local first = login()
    harness.upstream("echo", function(req) return {status = 200, headers = {["X-Session-Login"] = "ann"}} end)
    local res = harness.request{method = "POST", path = "/app/login", headers = {Cookie = "moongate_session=" .. first}}
    local second = cookie_of(res)
    assert.truthy(second ~= first)
    harness.upstream("echo", function() return {status = 200} end)
    assert.is_nil(get(first).upstream.headers["x-session-subject"])
    assert.equals("ann", get(second).upstream.headers["x-session-subject"])
  end)
  it("destroys the session on logout", function()
    local value = login()
    local res = harness.request{method = "POST", path = "/app/logout", headers = {Cookie = "moongate_session=" .. value}}
    assert.equals(204, res.status)
    local _, set = cookie_of(res)
    assert.matches("Max%-Age=0", set)
    assert.is_nil(get(value).upstream.headers["x-session-subject"])
  end)
end)
