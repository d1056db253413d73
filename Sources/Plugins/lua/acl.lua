-- acl: allows or denies consumers by group. Groups come from ctx.groups (set by an earlier
-- plugin or policy) and from this plugin's own consumers map; an unauthenticated request is 401.
local request, json, table = request, json, table

return {
  description = "allow/deny by consumer group (after an auth plugin)",
  priority = 950,
  schema = {
    allow = {type = "array", items = {type = "string", min = 1}, default = {}},
    deny = {type = "array", items = {type = "string", min = 1}, default = {}},
    consumers = {type = "map", values = {type = "array", items = {type = "string"}}, default = {},
                 description = "consumer name -> its groups"},
    groups_header = {type = "string", default = "X-Consumer-Groups", description = "groups sent upstream (\"\" for none)"},
  },
  prepare = function(conf)
    if #conf.allow > 0 and #conf.deny > 0 then error("acl: give allow or deny, not both", 0) end
    local set = function(list) local s = {} for _, v in ipairs(list) do s[v] = true end return s end
    local members = {}
    for consumer, groups in pairs(conf.consumers) do members[consumer] = groups end
    return {
      allow = #conf.allow > 0 and set(conf.allow) or nil, deny = #conf.deny > 0 and set(conf.deny) or nil,
      members = members, header = conf.groups_header ~= "" and conf.groups_header or nil,
      forbidden = json.encode({error = "you cannot consume this service"}),
      unauthorized = json.encode({error = "unauthorized"}),
    }
  end,
  access = function(p, ctx)
    local consumer = ctx.consumer
    if consumer == nil then
      request.respond(401, p.unauthorized, {["Content-Type"] = "application/json"})
    end
    local groups = {}
    for _, g in ipairs(ctx.groups or {}) do groups[#groups + 1] = g end
    for _, g in ipairs(p.members[consumer] or {}) do groups[#groups + 1] = g end
    local allowed = p.allow == nil
    for _, g in ipairs(groups) do
      if p.deny and p.deny[g] then allowed = false break end
      if p.allow and p.allow[g] then allowed = true end
    end
    if not allowed then
      request.respond(403, p.forbidden, {["Content-Type"] = "application/json"})
    end
    if p.header and #groups > 0 then request.set_header(p.header, table.concat(groups, ", ")) end
  end,
}
