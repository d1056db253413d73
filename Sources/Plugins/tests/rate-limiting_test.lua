describe("rate-limiting", function()
  local function get(key)
    return harness.request{path = "/limited/x", headers = {["X-Api-Key"] = key}}
  end
  it("allows the capacity, then answers 429 with RateLimit headers", function()
    for i = 1, 3 do
      local res = get("test-key")
      assert.equals(200, res.status)
      assert.equals(tostring(3 - i), res.headers["ratelimit-remaining"])
    end
    local res = get("test-key")
    assert.equals(429, res.status)
    assert.equals("1", res.headers["retry-after"])
  end)
  it("refills at the rate", function()
    for _ = 1, 3 do get("test-key") end
    assert.equals(429, get("test-key").status)
    harness.clock.advance(1)
    assert.equals(200, get("test-key").status)
  end)
  it("keeps one bucket per consumer", function()
    for _ = 1, 3 do get("test-key") end
    assert.equals(429, get("test-key").status)
    assert.equals(200, harness.request{path = "/limited/x"}.status)   -- the anonymous consumer
  end)
end)
