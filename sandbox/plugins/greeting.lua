-- A user plugin: a Lua module with a schema, a priority and phase functions, like the
-- built-in ones (`moongate plugins` lists both). Saved changes reload like policies.
return {
  description = "greets the upstream and the client in a header",
  priority = 500,
  schema = {
    name = {type = "string", default = "world", min = 1, max = 64},
    header = {type = "string", default = "X-Greeting"},
  },
  access = function(conf, ctx)
    -- To see how a failing plugin is reported (500 for this request only, and a log line
    -- naming the plugin and its file:line), send X-Greeting-Fail.
    if request.header("X-Greeting-Fail") then error("asked to fail") end
    local greeting = "hello, " .. conf.name
    request.set_header(conf.header, greeting)
    response.set_header(conf.header, greeting)
  end,
}
