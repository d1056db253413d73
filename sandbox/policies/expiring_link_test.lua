-- Tests for expiring_link.lua, with the harness's clock.
describe("expiring links", function()
  local function get(expires)
    return harness.request{path = "/download/report.pdf?expires=" .. expires}
  end

  it("serves a link before it expires", function()
    local res = get(harness.clock.now() + 60)
    assert.equals(200, res.status)
    assert.equals("60", res.upstream.headers["x-link-seconds-left"])
  end)

  it("refuses it once the clock passes its time", function()
    local expires = harness.clock.now() + 60
    assert.equals(200, get(expires).status)
    harness.clock.advance(61)
    assert.equals(410, get(expires).status)
  end)

  it("refuses a link without an expiry", function()
    assert.equals(400, harness.request{path = "/download/report.pdf"}.status)
  end)

  it("follows a clock set to any date", function()
    harness.clock.set(2000000000)
    assert.equals(410, get(1999999999).status)
    assert.equals(200, get(2000000001).status)
  end)
end)
