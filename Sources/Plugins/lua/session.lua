-- session: server-side sessions. The browser holds only a random id, signed (HMAC-SHA256)
-- in an HttpOnly, Secure, SameSite cookie; the session lives in the kv store (Redis when the
-- gateway has one, else its memory), with idle and absolute timeouts. A login (the upstream
-- names the subject in a response header, or an earlier auth plugin set ctx.consumer) always
-- starts a new id (no fixation); a logout destroys it. A cookie whose signature does not
-- check is ignored and cleared. When the store cannot answer, the request goes on without a
-- session and the cookie is kept.
local request, response, crypto, kv, json, now, string, math = request, response, crypto, kv, json, now, string, math

local function sign(p, id) return crypto.b64encode(crypto.hmac_sha256(p.secret, id), true) end

local function cookie(p, value, max_age)
  return p.name .. "=" .. value .. "; Path=" .. p.path .. p.domain .. "; Max-Age=" .. max_age
    .. "; HttpOnly" .. p.secure .. "; SameSite=" .. p.same_site
end

-- The session id in the request's cookie when its signature checks; false for a forged or
-- malformed one; nil for none.
local function cookie_id(p)
  local header = request.header("Cookie")
  if header == nil then return nil end
  for name, value in string.gmatch(header, "([^=;%s]+)=([^;]*)") do
    if name == p.name then
      local id, sig = value:match("^([%w_%-]+)%.([%w_%-]+)$")
      if id and #id == 43 and crypto.equal(sign(p, id), sig) then return id end
      return false
    end
  end
  return nil
end

local function start(p, ctx, subject)
  if ctx.session_id then kv.delete("s:" .. ctx.session_id) end
  local id = crypto.b64encode(crypto.random(32), true)
  local t = now()
  kv.set("s:" .. id, json.encode({sub = subject, created = t, seen = t}), p.idle)
  response.add_header("Set-Cookie", cookie(p, id .. "." .. sign(p, id), p.absolute))
  ctx.session_id = id
end

local function destroy(p, ctx)
  if ctx.session_id then kv.delete("s:" .. ctx.session_id) end
  ctx.session_id = nil
  response.add_header("Set-Cookie", cookie(p, "", 0))
end

return {
  description = "server-side sessions in Redis or memory, signed HttpOnly/Secure/SameSite cookie, idle and absolute timeouts",
  priority = 1900,
  schema = {
    secret = {type = "string", required = true, min = 32, description = "HMAC key for the cookie (32 bytes or more)"},
    cookie_name = {type = "string", default = "moongate_session", min = 1},
    idle_timeout = {type = "integer", default = 1800, min = 1, description = "seconds without a request"},
    absolute_timeout = {type = "integer", default = 86400, min = 1, description = "seconds from login"},
    secure = {type = "boolean", default = true},
    same_site = {type = "string", default = "Lax", one_of = {"Strict", "Lax", "None"}},
    path = {type = "string", default = "/"},
    domain = {type = "string", min = 1},
    login_header = {type = "string", default = "X-Session-Login",
                    description = "an upstream response header naming the subject to log in (removed)"},
    logout_header = {type = "string", default = "X-Session-Logout", description = "an upstream response header that logs out (removed)"},
    logout_path = {type = "string", min = 1, description = "a path whose POST logs out, answered by the gateway"},
    subject_header = {type = "string", default = "X-Session-Subject", description = "the subject, for the upstream"},
    from_consumer = {type = "boolean", default = true, description = "log in who an earlier auth plugin authenticated"},
  },
  prepare = function(conf)
    if conf.same_site == "None" and not conf.secure then error("session: SameSite=None needs secure = true", 0) end
    if conf.absolute_timeout < conf.idle_timeout then error("session: absolute_timeout is shorter than idle_timeout", 0) end
    return {
      secret = conf.secret, name = conf.cookie_name, idle = conf.idle_timeout, absolute = conf.absolute_timeout,
      secure = conf.secure and "; Secure" or "", same_site = conf.same_site, path = conf.path,
      domain = conf.domain and ("; Domain=" .. conf.domain) or "", login = conf.login_header, logout = conf.logout_header,
      logout_path = conf.logout_path, subject = conf.subject_header, from_consumer = conf.from_consumer,
    }
  end,
  access = function(p, ctx)
    -- Only the gateway says who the session's subject is.
    request.remove_header(p.subject)
    local id = cookie_id(p)
    if id == false then
      ctx.session_clear = true
    elseif id then
      local stored, err = kv.get("s:" .. id)
      local ok, s = pcall(json.decode, stored or "")
      local t = now()
      if err then
        -- The store cannot answer (Redis down): no session for this request, but the
        -- cookie stays, so the user is logged in again once the store is back.
        ctx.session_unavailable = true
      elseif stored and ok and type(s) == "table" and t - s.created < p.absolute and t - s.seen < p.idle then
        ctx.session_id = id
        ctx.session = s
        if ctx.consumer == nil then ctx.consumer = s.sub end
        request.set_header(p.subject, s.sub)
        -- Idle time is counted from the last touch; touching on every request would write on
        -- every request, so once a tenth of the idle time has gone by is enough.
        if t - s.seen > p.idle / 10 then
          s.seen = t
          kv.set("s:" .. id, json.encode(s), math.min(p.idle, p.absolute - (t - s.created)))
        end
      else
        if stored then kv.delete("s:" .. id) end
        ctx.session_clear = true
      end
    end
    if p.logout_path and request.path() == p.logout_path and request.method() == "POST" then
      destroy(p, ctx)
      request.respond(204)
    end
    ctx.session_checked = true
  end,
  response = function(p, ctx)
    if not ctx.session_checked then return end
    local login = response.header(p.login)
    if login ~= nil then
      response.remove_header(p.login)
      start(p, ctx, login)
    elseif response.header(p.logout) ~= nil then
      response.remove_header(p.logout)
      destroy(p, ctx)
    elseif ctx.session_id == nil and p.from_consumer and ctx.consumer ~= nil and not ctx.session_unavailable then
      start(p, ctx, ctx.consumer)
    elseif ctx.session_clear then
      response.add_header("Set-Cookie", cookie(p, "", 0))
    end
  end,
}
