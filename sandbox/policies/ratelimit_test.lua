-- Tests for ratelimit.lua: the bucket empties, refills with the (fake) clock, and each
-- client has its own.
describe("ratelimit", function()
  local function get(client, method)
    return harness.request{method = method or "GET", path = "/limited/items", client = client or "10.0.0.1"}
  end

  it("lets a client's first 5 requests through and counts down", function()
    for left = 4, 0, -1 do
      local res = get()
      assert.equals(200, res.status)
      assert.equals("5", res.headers["ratelimit-limit"])
      assert.equals(tostring(left), res.headers["ratelimit-remaining"])
    end
  end)

  it("answers the 6th with 429, Retry-After and a JSON error, without calling the upstream", function()
    for _ = 1, 5 do get() end
    local res = get()
    assert.equals(429, res.status)
    assert.equals("1", res.headers["retry-after"])
    assert.equals("rate limited", json.decode(res.body).error)
    assert.is_nil(res.upstream)
  end)

  it("refills one request a second", function()
    for _ = 1, 6 do get() end
    harness.clock.advance(1)
    assert.equals(200, get().status)
    assert.equals(429, get().status)
    harness.clock.advance(3)
    for _ = 1, 3 do assert.equals(200, get().status) end
    assert.equals(429, get().status)
  end)

  it("gives each client its own bucket", function()
    for _ = 1, 6 do get("10.0.0.1") end
    assert.equals(200, get("10.0.0.2").status)
  end)

  it("charges writes twice", function()
    assert.equals("3", get(nil, "POST").headers["ratelimit-remaining"])
    assert.equals("1", get(nil, "POST").headers["ratelimit-remaining"])
    assert.equals(429, get(nil, "POST").status)
    assert.equals(200, get(nil, "GET").status)
  end)
end)
