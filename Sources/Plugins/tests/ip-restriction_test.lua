describe("ip-restriction", function()
  local function from(client, xff)
    return harness.request{path = "/ip/x", client = client, headers = {["X-Forwarded-For"] = xff}}.status
  end
  it("allows IPv4 and IPv6 addresses in the allow list", function()
    assert.equals(200, from("10.1.2.3"))
    assert.equals(200, from("2001:db8::7"))
  end)
  it("refuses addresses outside it", function()
    assert.equals(403, from("11.0.0.1"))
    assert.equals(403, from("2001:db9::1"))
  end)
  it("refuses the denied range inside the allowed one", function()
    assert.equals(403, from("10.9.1.1"))
  end)
  it("believes X-Forwarded-For only from trusted proxies", function()
    assert.equals(200, from("192.168.1.1", "10.1.1.1"))
    assert.equals(403, from("192.168.1.1", "11.1.1.1"))
    assert.equals(403, from("11.2.2.2", "10.1.1.1"))      -- an untrusted peer's claim is ignored
    assert.equals(200, from("fd00::1", "11.1.1.1, 10.2.2.2, 192.168.3.3"))  -- right-most untrusted hop
  end)
end)
