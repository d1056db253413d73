import Foundation
import Testing

/// A listener's router script picks routes in Lua; nil falls back to the config's matching.
@Suite(.serialized) struct RouterTests {
    static let config = """
        listeners:
          - name: test
            address: 127.0.0.1:@PORT@
            router: router.lua
        upstreams:
          echo:
            targets: [ "@ECHO@" ]
        routes:
          - name: beta
            match: { path_prefix: /only-by-router }
            upstream: echo
            policy: via.lua
          - name: plain
            match: { path_prefix: / }
            upstream: echo
        """

    static let scripts = [
        "router.lua": """
            return {
              route = function(ctx)
                if request.header("X-Beta") == "1" then
                  ctx.via = "router"
                  return "beta"
                end
                if request.header("X-Bogus") then return "no-such-route" end
                if request.path() == "/deny" then request.respond(401, "no") end
                request.set_header("X-Routed", "fallback")
              end,
            }
            """,
        "via.lua": "return { access = function(ctx) request.set_header('X-Via', ctx.via or 'none') request.set_header('X-Route', request.route()) end }",
    ]

    @Test func routerPicksRoutes() async throws {
        try await withGateway(Self.config, scripts: Self.scripts) { gw in
            let c = try gw.client()
            let beta = try c.request("GET", "/anything", headers: [("X-Beta", "1")])
            #expect(beta.echoed("X-Via") == ["router"], "the router's ctx carries into the route's phases")
            #expect(beta.echoed("X-Route") == ["beta"])
            let plain = try c.request("GET", "/anything")
            #expect(plain.echoed("X-Routed") == ["fallback"], "a router's changes apply to the route it falls back to")
            #expect(plain.echoed("X-Via").isEmpty)
            let bogus = try c.request("GET", "/x", headers: [("X-Bogus", "1")])
            #expect(bogus.status == 500)
            let denied = try c.request("GET", "/deny")
            #expect(denied.status == 401)
            #expect(denied.text == "no")
            #expect(try c.request("GET", "/anything").status == 200)
        }
    }

    @Test func routerMustDefineRoute() async throws {
        try await withGateway(Self.config, scripts: Self.scripts) { gw in
            try gw.writeScript("router.lua", "return { access = function() end }")
            let result = await gw.gateway.reload()
            let expected = #"policies/router.lua: unknown phase "access" in the returned table (expected a route function)"#
            #expect(result.errors.contains { $0.hasSuffix(expected) }, "\(result.errors)")
        }
    }
}
