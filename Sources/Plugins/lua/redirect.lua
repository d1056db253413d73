-- redirect: answers with a redirect to a fixed location, optionally keeping the path and query.
local request = request

return {
  description = "redirects (301, 302, 303, 307, 308) to a location, keeping path and query if asked",
  priority = 779,
  schema = {
    location = {type = "string", required = true, min = 1, description = "absolute URL or path"},
    status = {type = "integer", default = 301, one_of = {301, 302, 303, 307, 308}},
    keep_path = {type = "boolean", default = false, description = "append the request's path"},
    keep_query = {type = "boolean", default = true, description = "append the request's query"},
  },
  prepare = function(conf)
    if conf.location:find("[\r\n]") then error("redirect: the location holds a line break", 0) end
    local base = conf.location
    if conf.keep_path then base = base:gsub("/$", "") end
    return {base = base, status = conf.status, keep_path = conf.keep_path, keep_query = conf.keep_query}
  end,
  access = function(p, ctx)
    local location = p.base
    if p.keep_path then location = location .. request.path() end
    local query = p.keep_query and request.query()
    if query and query ~= "" then
      location = location .. (location:find("?", 1, true) and "&" or "?") .. query
    end
    request.respond(p.status, nil, {["Location"] = location})
  end,
}
