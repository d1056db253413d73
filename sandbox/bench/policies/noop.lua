-- A policy that does nothing: what entering the Lua runtime costs a request
-- (scripts/bench --policy-cost compares /noop/ with /proxy/).
return {
  access = function(ctx) end,
}
