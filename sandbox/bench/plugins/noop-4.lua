-- A no-op plugin: scripts/bench --plugin-cost chains ten of them.
return { priority = 4, access = function(conf, ctx) end }
