import Config
import Foundation
import Proxy
import Redis
import RedisTestServer
import Testing

/// Plugins through the gateway on real sockets: chains of built-in and user plugins, schema
/// errors at load with file:line:path, a broken user plugin keeping the last good generation,
/// a plugin that raises failing only its request, and rate limits across two gateways.
@Suite(.serialized) struct PluginTests {
    static let config = """
        listeners:
          - name: test
            address: 127.0.0.1:@PORT@
        apikeys:
          partners:
            keys:
              - { sha256: 62af8704764faf8ea82fc61ce9c4c3908b6cb97d463a634e9e587d7c885db0ef, consumer: acme }
        plugins:
          dirs: [plugins]
          global:
            - name: correlation-id
        upstreams:
          echo:
            targets: [ "@ECHO@" ]
        routes:
          - name: api
            match: { path_prefix: /api/ }
            upstream: echo
            plugins:
              - { name: key-auth, config: { set: partners } }
              - name: cors
                config: { origins: ["https://app.example.com"], credentials: true, max_age: 60 }
          - name: local-only
            match: { path_prefix: /local/ }
            upstream: echo
            plugins:
              - { name: ip-restriction, config: { allow: [127.0.0.0/8, "::1"] } }
          - name: remote-only
            match: { path_prefix: /remote/ }
            upstream: echo
            plugins:
              - { name: ip-restriction, config: { allow: [10.0.0.0/8], trusted_proxies: [127.0.0.1/32] } }
          - name: stamped
            match: { path_prefix: /stamped/ }
            upstream: echo
            plugins:
              - { name: stamp, config: { value: one } }
            policy: after.lua
          - name: default
            match: { path_prefix: / }
            upstream: echo
        """

    static func stamp(_ version: String) -> String {
        """
        return {
          priority = 10,
          schema = { value = { type = "string", required = true } },
          access = function(conf, ctx)
            if request.header("X-Raise") then error("stamp failed on purpose") end
            request.set_header("X-Stamp", conf.value .. "-\(version)")
            ctx.stamped = true
          end,
        }
        """
    }

    static let after = """
        return { access = function(ctx) request.set_header("X-After", ctx.stamped and "yes" or "no") end }
        """

    func withPlugins(_ body: (TestGateway) async throws -> Void) async throws {
        // `scripts` go to policies/ beside the config; the user plugin goes to plugins/ there.
        try await withGateway(Self.config, scripts: ["after.lua": Self.after, "../plugins/stamp.lua": Self.stamp("1")]) { gw in
            try await body(gw)
        }
    }

    func writePlugin(_ gw: TestGateway, _ name: String, _ source: String) throws {
        let dir = (gw.configPath as NSString).deletingLastPathComponent + "/plugins"
        try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
        try source.write(toFile: dir + "/" + name, atomically: true, encoding: .utf8)
    }

    @Test func aChainRunsOnRealRequests() async throws {
        try await withGateway(Self.config.replacingOccurrences(of: "dirs: [plugins]", with: "dirs: []")
            .replacingOccurrences(of: "      - { name: stamp, config: { value: one } }\n", with: "      - { name: correlation-id }\n"), scripts: ["after.lua": Self.after]) { gw in
            let c = try gw.client()
            let origin = ("Origin", "https://app.example.com")
            // CORS preflight: answered by the gateway, before key-auth (higher priority).
            let preflight = try c.request("OPTIONS", "/api/x", headers: [origin, ("Access-Control-Request-Method", "POST")])
            #expect(preflight.status == 204)
            #expect(preflight.header("Access-Control-Allow-Origin") == "https://app.example.com")
            #expect(preflight.header("Access-Control-Allow-Credentials") == "true")
            #expect(preflight.header("Access-Control-Max-Age") == "60")
            #expect(gw.stats.accepted.withLockedValue { $0 } == 0, "the upstream never saw the preflight")
            // No key: 401, with the CORS and correlation headers a browser needs to read it.
            let refused = try c.request("GET", "/api/x", headers: [origin])
            #expect(refused.status == 401)
            #expect(refused.header("Access-Control-Allow-Origin") == "https://app.example.com")
            #expect(refused.header("X-Correlation-Id") != nil)
            // A key: through, with the consumer named and the key hidden.
            let ok = try c.request("GET", "/api/x", headers: [origin, ("X-Api-Key", "test-key"), ("X-Correlation-Id", "c-1")])
            #expect(ok.status == 200)
            #expect(ok.echoed("X-Consumer") == ["acme"])
            #expect(ok.echoed("X-Api-Key").isEmpty)
            #expect(ok.echoed("X-Correlation-Id") == ["c-1"])
            #expect(ok.header("X-Correlation-Id") == "c-1")
            #expect(ok.header("Vary") == "Origin")
            // IP restriction on the real peer address, and X-Forwarded-For believed only
            // from a trusted proxy (here the test client itself, 127.0.0.1).
            #expect(try c.request("GET", "/local/x").status == 200)
            #expect(try c.request("GET", "/remote/x").status == 403)
            #expect(try c.request("GET", "/remote/x", headers: [("X-Forwarded-For", "10.1.2.3")]).status == 200)
            #expect(try c.request("GET", "/remote/x", headers: [("X-Forwarded-For", "10.1.2.3, 11.0.0.1")]).status == 403)
            // The route's own policy runs after its plugins, on the same ctx.
            #expect(try c.request("GET", "/stamped/x").echoed("X-After") == ["no"])
        }
    }

    @Test func userPluginsReloadAndABrokenOneKeepsTheLastGoodGeneration() async throws {
        try await withPlugins { gw in
            let c = try gw.client()
            let first = try c.request("GET", "/stamped/x")
            #expect(first.echoed("X-Stamp") == ["one-1"])
            #expect(first.echoed("X-After") == ["yes"])
            let broken: [(String, String)] = [
                ("return {\n  access = function(conf)\n    request.set_header(\n  end,\n}", "plugins/stamp.lua:4: unexpected symbol near 'end'"),
                ("return { priority = 1 }", "plugins/stamp.lua: the plugin defines no phase (access, response or log)"),
                ("return { access = function() end, schema = { value = { type = \"text\" } } }", "schema.value: type must be string"),
                ("return { access = function() end, hooks = {} }", "plugins/stamp.lua: unknown key \"hooks\""),
            ]
            for (source, expected) in broken {
                try writePlugin(gw, "stamp.lua", source)
                let result = await gw.gateway.reload()
                #expect(!result.succeeded)
                #expect(result.errors.contains { $0.contains(expected) }, "\(result.errors)")
                #expect(try c.request("GET", "/stamped/x").echoed("X-Stamp") == ["one-1"], "the last good generation keeps serving")
            }
            try writePlugin(gw, "stamp.lua", Self.stamp("2"))
            #expect(await gw.gateway.reload().succeeded)
            #expect(try c.request("GET", "/stamped/x").echoed("X-Stamp") == ["one-2"])
        }
    }

    @Test func aPluginThatRaisesFailsOnlyItsRequest() async throws {
        try await withPlugins { gw in
            let c = try gw.client()
            let failed = try c.request("GET", "/stamped/x", headers: [("X-Raise", "1")])
            #expect(failed.status == 500)
            #expect(try c.request("GET", "/stamped/x").status == 200)
            #expect(try c.request("GET", "/other").status == 200)
        }
    }

    @Test func rateLimitingIsExactAcrossTwoGatewaysOnOneRedis() async throws {
        let redis = try RedisProcess()
        let config = """
            listeners:
              - name: test
                address: 127.0.0.1:@PORT@
            redis:
              shared:
                address: 127.0.0.1:\(redis.port)
                command_timeout: 500ms
            upstreams:
              echo:
                targets: [ "@ECHO@" ]
            routes:
              - name: limited
                match: { path_prefix: / }
                upstream: echo
                plugins:
                  - { name: rate-limiting, config: { by: header, header: X-Key, capacity: 50, rate: 200, store: shared } }
            """
        try await withGateway(config, workers: 2) { a in
            try await withGateway(config, workers: 2) { b in
                let load = PacedLoad(ports: [a.port, b.port], clients: 8, perClientRate: 50, seconds: 4, headers: [("X-Key", "plugin-accuracy")])
                try await load.wait()
                try RateLimitTests.expectAccurate(load, capacity: 50, rate: 200)
                #expect(load.allowedByPort[a.port, default: 0] > 50 && load.allowedByPort[b.port, default: 0] > 50, "\(load.allowedByPort)")
            }
        }
    }

    /// A user plugin standing in for a login page: it names the subject the way an upstream
    /// would (`X-Session-Login` on the answer), so the session plugin sees a login.
    static let testLogin = """
        return {
          priority = 5000,
          access = function(conf, ctx)
            local who = request.header("X-Test-Login")
            if who then response.set_header("X-Session-Login", who) end
          end,
        }
        """

    @Test func sessionsLiveInRedis() async throws {
        let redis = try RedisProcess()
        let config = """
            listeners:
              - name: test
                address: 127.0.0.1:@PORT@
            redis:
              main:
                address: 127.0.0.1:\(redis.port)
                command_timeout: 500ms
            plugins:
              dirs: [plugins]
            upstreams:
              echo:
                targets: [ "@ECHO@" ]
            routes:
              - name: app
                match: { path_prefix: /app/ }
                upstream: echo
                plugins:
                  - { name: test-login }
                  - name: session
                    config: { secret: "0123456789abcdef0123456789abcdef", idle_timeout: 60, absolute_timeout: 300, logout_path: /app/logout }
              - name: short
                match: { path_prefix: /short/ }
                upstream: echo
                plugins:
                  - { name: test-login }
                  - name: session
                    config: { secret: "0123456789abcdef0123456789abcdef", idle_timeout: 1, absolute_timeout: 2 }
            """
        let store = try redis.connection()
        func exists(_ cookie: String) throws -> Bool {
            try store.send(RedisCommand("EXISTS", "moongate:kv:session:s:" + cookie.prefix { $0 != "." })) == .integer(1)
        }
        // `kv.set` and `kv.delete` do not wait for Redis: give them a moment.
        func settles(_ cookie: String, present: Bool) throws -> Bool {
            var tries = 0
            while try exists(cookie) != present, tries < 200 {
                usleep(10_000)
                tries += 1
            }
            return try exists(cookie) == present
        }
        func present(_ cookie: String) throws -> Bool { try settles(cookie, present: true) }
        func gone(_ cookie: String) throws -> Bool { try settles(cookie, present: false) }
        try await withGateway(config, scripts: ["../plugins/test-login.lua": Self.testLogin]) { gw in
            let c = try gw.client()
            func cookie(_ r: RawClient.Response) -> String? {
                r.headers("Set-Cookie").last.flatMap { $0.split(separator: ";").first }.map { String($0.dropFirst("moongate_session=".count)) }
            }
            func me(_ value: String, _ path: String = "/app/me") throws -> RawClient.Response {
                try c.request("GET", path, headers: [("Cookie", "moongate_session=" + value)])
            }
            // Create: a signed, HttpOnly, Secure, SameSite cookie; the session is in Redis,
            // with the idle timeout as its time to live.
            let login = try c.request("POST", "/app/login", headers: [("X-Test-Login", "ann")])
            #expect(login.status == 200)
            #expect(login.header("X-Session-Login") == nil, "the login header never reaches the client")
            let set = try #require(login.headers("Set-Cookie").last)
            for flag in ["HttpOnly", "Secure", "SameSite=Lax", "Max-Age=300", "Path=/"] { #expect(set.contains(flag), "\(set)") }
            let first = try #require(cookie(login))
            #expect(try present(first))
            let pttl = try store.send(RedisCommand("PTTL", "moongate:kv:session:s:" + first.prefix { $0 != "." }))
            guard case .integer(let ms) = pttl else { Issue.record("PTTL: \(pttl)"); return }
            #expect(ms > 50_000 && ms <= 60_000)
            // Read: the upstream learns the subject; a client cannot claim one.
            #expect(try me(first).echoed("X-Session-Subject") == ["ann"])
            #expect(try c.request("GET", "/app/me", headers: [("X-Session-Subject", "root")]).echoed("X-Session-Subject").isEmpty)
            // A second gateway on the same Redis reads the same session.
            try await withGateway(config, workers: 1, scripts: ["../plugins/test-login.lua": Self.testLogin]) { other in
                let r = try other.client().request("GET", "/app/me", headers: [("Cookie", "moongate_session=" + first)])
                #expect(r.echoed("X-Session-Subject") == ["ann"])
            }
            // Forged: the id of a real session with a made-up signature is refused and cleared.
            let forged = try me(String(first.prefix { $0 != "." }) + "." + String(repeating: "A", count: 43))
            #expect(forged.echoed("X-Session-Subject").isEmpty)
            #expect(forged.headers("Set-Cookie").last?.contains("Max-Age=0") == true)
            #expect(try exists(first), "a forged cookie does not destroy the real session")
            // Rotate: a new login gets a new id, and the old session is deleted.
            let again = try c.request("POST", "/app/login", headers: [("X-Test-Login", "ann"), ("Cookie", "moongate_session=" + first)])
            let second = try #require(cookie(again))
            #expect(second != first)
            #expect(try gone(first))
            #expect(try me(first).echoed("X-Session-Subject").isEmpty)
            #expect(try me(second).echoed("X-Session-Subject") == ["ann"])
            // Destroy: the logout path answers 204, clears the cookie, deletes the session.
            let logout = try c.request("POST", "/app/logout", headers: [("Cookie", "moongate_session=" + second)])
            #expect(logout.status == 204)
            #expect(logout.headers("Set-Cookie").last?.contains("Max-Age=0") == true)
            #expect(try gone(second))
            #expect(try me(second).echoed("X-Session-Subject").isEmpty)
            // Expire: idle for longer than the idle timeout (1 s on /short/).
            let short = try #require(cookie(try c.request("POST", "/short/login", headers: [("X-Test-Login", "bob")])))
            #expect(try me(short, "/short/me").echoed("X-Session-Subject") == ["bob"])
            usleep(1_300_000)
            #expect(try me(short, "/short/me").echoed("X-Session-Subject").isEmpty)
            // Redis gone: the request goes on without a session, and the cookie is kept.
            let third = try #require(cookie(try c.request("POST", "/app/login", headers: [("X-Test-Login", "cat")])))
            #expect(try me(third).echoed("X-Session-Subject") == ["cat"])
            redis.kill()
            let down = try me(third)
            #expect(down.status == 200)
            #expect(down.echoed("X-Session-Subject").isEmpty)
            #expect(down.headers("Set-Cookie").isEmpty, "the cookie is not cleared while the store is down")
        }
    }
}

/// Plugin configs checked against their schemas when the config loads: one message per
/// problem, at the file, line and path of the value.
@Suite struct PluginSchemaErrorTests {
    func problems(_ pluginsYAML: String) throws -> [String] {
        let folder = FileManager.default.temporaryDirectory.appendingPathComponent("moongate-schema-\(UUID().uuidString)").path
        try FileManager.default.createDirectory(atPath: folder, withIntermediateDirectories: true)
        let yaml = """
            listeners:
              - address: 127.0.0.1:0
            upstreams:
              echo:
                targets: [127.0.0.1:1]
            routes:
              - name: r
                match: { path_prefix: / }
                upstream: echo
                plugins:
            \(pluginsYAML)
            """
        try yaml.write(toFile: folder + "/gateway.yaml", atomically: true, encoding: .utf8)
        let config = try ConfigLoader.load(path: folder + "/gateway.yaml")
        do {
            _ = try ProxyGeneration.loadScripts(config)
            return []
        } catch let error as ConfigError {
            return error.diagnostics.map(\.description).map { $0.replacingOccurrences(of: folder + "/", with: "") }
        }
    }

    @Test func eachKindOfFieldReportsWhereItIsWrong() throws {
        let cases: [(String, String)] = [
            ("      - { name: rate-limiting, config: { capacity: 10, rate: ten } }",
             "gateway.yaml:11 routes[0].plugins[0].config.rate: expected a number, got \"ten\""),
            ("      - { name: rate-limiting, config: { rate: 1 } }",
             "gateway.yaml:11 routes[0].plugins[0].config.capacity: required (requests a burst may hold)"),
            ("      - { name: rate-limiting, config: { capacity: 0, rate: 1 } }",
             "gateway.yaml:11 routes[0].plugins[0].config.capacity: expected at least 1, got 0"),
            ("      - { name: rate-limiting, config: { capacity: 5, rate: 1, by: user } }",
             "gateway.yaml:11 routes[0].plugins[0].config.by: expected one of: consumer, ip, header, route; got \"user\""),
            ("      - { name: cors, config: { max_age: 1.5 } }",
             "gateway.yaml:11 routes[0].plugins[0].config.max_age: expected an integer, got 1.5"),
            ("      - { name: cors, config: { credentials: \"yes\" } }",
             "gateway.yaml:11 routes[0].plugins[0].config.credentials: expected true or false, got \"yes\""),
            ("      - name: cors\n        config:\n          origins: [\"https://a.example\", 7]",
             "gateway.yaml:13 routes[0].plugins[0].config.origins[1]: expected a string, got 7"),
            ("      - { name: cors, config: { origins: https://a.example } }",
             "gateway.yaml:11 routes[0].plugins[0].config.origins: expected a list of strings, got \"https://a.example\""),
            ("      - { name: cors, config: { origin: [x] } }",
             "gateway.yaml:11 routes[0].plugins[0].config.origin: unknown field \"origin\""),
            ("      - { name: jwt-auth, config: { keyset: k, claims_to_headers: { email: [a] } } }",
             "gateway.yaml:11 routes[0].plugins[0].config.claims_to_headers.email: expected a string, got a list"),
            ("      - { name: request-transformer, config: { add: { headers: [a] } } }",
             "gateway.yaml:11 routes[0].plugins[0].config.add.headers: expected a mapping of names to strings, got a list"),
            ("      - { name: request-transformer, config: { add: { cookies: {} } } }",
             "gateway.yaml:11 routes[0].plugins[0].config.add.cookies: unknown field \"cookies\""),
            ("      - { name: cors, config: { max_age: 100000 } }",
             "gateway.yaml:11 routes[0].plugins[0].config.max_age: expected at most 86400, got 100000"),
            ("      - { name: session, config: { secret: short } }",
             "gateway.yaml:11 routes[0].plugins[0].config.secret: expected at least 32 bytes long, got 5"),
            ("      - name: ip-restriction\n        config:\n          allow: [10.0.0.0/8, 10.0.0.0/33]",
             "gateway.yaml:13 routes[0].plugins[0].config.allow[1]: expected an address or CIDR range such as 10.0.0.0/8 or 2001:db8::/32, got \"10.0.0.0/33\""),
            ("      - { name: ip-restriction, config: { deny: [\"2001:db8::/129\"] } }",
             "gateway.yaml:11 routes[0].plugins[0].config.deny[0]: expected an address or CIDR range"),
            ("      - { name: no-such-plugin }",
             "gateway.yaml:11 routes[0].plugins[0].name: unknown plugin \"no-such-plugin\""),
        ]
        for (yaml, expected) in cases {
            let found = try problems(yaml)
            #expect(found.contains { $0.hasPrefix(expected) }, "\(yaml)\n→ \(found)")
        }
        #expect(try problems("      - { name: cors, config: { max_age: 60 } }").isEmpty)
    }
}
