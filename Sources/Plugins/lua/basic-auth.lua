-- basic-auth: HTTP Basic credentials checked against PBKDF2-SHA256 hashes in the config
-- (`moongate plugins hash-password` makes them); passwords are never stored. A state keeps
-- the digests of credentials it has verified, so the slow hash runs once per credential.
local request, crypto, json, string = request, crypto, json, string

local MAX_CACHE = 1000

local function parse(stored)
  local iterations, salt, hash = stored:match("^pbkdf2%-sha256%$(%d+)%$([^$]+)%$([^$]+)$")
  if not iterations then return nil end
  return {iterations = tonumber(iterations), salt = crypto.b64decode(salt), hash = crypto.b64decode(hash)}
end

return {
  description = "HTTP Basic auth against PBKDF2-SHA256 password hashes",
  priority = 1100,
  schema = {
    credentials = {type = "map", values = {type = "string"}, required = true,
                   description = "username -> pbkdf2-sha256$iterations$salt$hash"},
    realm = {type = "string", default = "moongate"},
    hide_credentials = {type = "boolean", default = true},
    consumer_header = {type = "string", default = "X-Consumer"},
    anonymous = {type = "string", min = 1},
  },
  prepare = function(conf)
    local users = {}
    for user, stored in pairs(conf.credentials) do
      local parsed = parse(stored)
      if not parsed or not parsed.salt or not parsed.hash or parsed.iterations < 1000 then
        error("basic-auth: credentials." .. user .. " is not pbkdf2-sha256$iterations(>=1000)$salt$hash", 0)
      end
      users[user] = parsed
    end
    return {users = users, verified = {}, cached = 0, realm = 'Basic realm="' .. conf.realm:gsub('"', "") .. '"',
            hide = conf.hide_credentials, header = conf.consumer_header, anonymous = conf.anonymous}
  end,
  access = function(p, ctx)
    local auth = request.header("Authorization")
    local encoded = auth and auth:match("^[Bb]asic%s+(%S+)%s*$")
    if encoded == nil and p.anonymous then
      ctx.consumer = p.anonymous
      request.set_header(p.header, p.anonymous)
      return
    end
    local decoded = encoded and crypto.b64decode(encoded)
    local user, password = nil, nil
    if decoded then user, password = decoded:match("^([^:]*):(.*)$") end
    local entry = user and p.users[user]
    local ok = false
    if entry then
      local seen = crypto.sha256(user .. "\0" .. password)
      if p.verified[seen] then
        ok = true
      else
        ok = crypto.equal(crypto.pbkdf2_sha256(password, entry.salt, entry.iterations), entry.hash)
        if ok then
          if p.cached >= MAX_CACHE then p.verified, p.cached = {}, 0 end
          p.verified[seen] = true
          p.cached = p.cached + 1
        end
      end
    end
    if not ok then
      request.respond(401, json.encode({error = "invalid credentials"}),
        {["Content-Type"] = "application/json", ["WWW-Authenticate"] = p.realm})
    end
    ctx.consumer = user
    request.set_header(p.header, user)
    if p.hide then request.remove_header("Authorization") end
  end,
}
