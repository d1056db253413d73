-- ip-restriction: allow or deny by CIDR (IPv4 and IPv6). Behind trusted proxies the client's
-- address is the right-most X-Forwarded-For entry that is not itself a trusted proxy.
local request, ip, json, string = request, ip, json, string

local function client(p)
  local peer = request.client_ip()
  if p.trusted == nil or not ip.in_cidrs(peer, p.trusted) then return peer end
  -- Walk X-Forwarded-For from the right: each hop a trusted proxy vouches for the next.
  local hops = {}
  for _, value in ipairs(request.header_values("X-Forwarded-For")) do
    for part in string.gmatch(value, "[^,]+") do
      hops[#hops + 1] = part:match("^%s*(.-)%s*$")
    end
  end
  local address = peer
  for i = #hops, 1, -1 do
    local hop = hops[i]
    if ip.parse(hop) == nil then break end
    address = hop
    if not ip.in_cidrs(hop, p.trusted) then break end
  end
  return address
end

return {
  description = "CIDR allow/deny lists (IPv4, IPv6), real client address behind trusted proxies",
  priority = 3000,
  schema = {
    allow = {type = "array", items = {type = "string", format = "cidr"}, default = {}, description = "if not empty, only these ranges"},
    deny = {type = "array", items = {type = "string", format = "cidr"}, default = {}, description = "never these ranges"},
    trusted_proxies = {type = "array", items = {type = "string", format = "cidr"}, default = {},
                       description = "proxies whose X-Forwarded-For is believed"},
    status = {type = "integer", default = 403, min = 400, max = 499},
    message = {type = "string", default = "your address is not allowed"},
  },
  prepare = function(conf)
    if #conf.allow == 0 and #conf.deny == 0 then error("ip-restriction: give allow or deny ranges", 0) end
    return {
      allow = #conf.allow > 0 and ip.cidrs(conf.allow) or nil,
      deny = #conf.deny > 0 and ip.cidrs(conf.deny) or nil,
      trusted = #conf.trusted_proxies > 0 and ip.cidrs(conf.trusted_proxies) or nil,
      status = conf.status,
      body = json.encode({error = conf.message}),
    }
  end,
  access = function(p, ctx)
    local address = client(p)
    ctx.client_ip = address
    if (p.deny and ip.in_cidrs(address, p.deny)) or (p.allow and not ip.in_cidrs(address, p.allow)) then
      request.respond(p.status, p.body, {["Content-Type"] = "application/json"})
    end
  end,
}
