-- The listener's router: picks a route by name, or returns nil to let the routes' match decide.
return {
  route = function(ctx)
    if request.header("X-Route") == "hello" then
      return "hello"
    end
  end,
}
