import Foundation
import Testing

/// The `upstream` Lua module on real sockets: choosing the upstream or a target, per-request
/// try settings and hash keys, and sub-requests a policy awaits.
@Suite(.serialized) struct UpstreamScriptTests {
    static let policy = """
        return { access = function()
          local path = request.path()
          if path == "/use" then upstream.use("other") end
          if path == "/target" then upstream.target("127.0.0.1", tonumber(request.header("X-Port"))) end
          if path == "/bad-target" then upstream.target("example.com", 80) end
          if path == "/noretry" then upstream.options{retries = 0} end
          if path == "/hashed" then upstream.options{hash_key = request.header("X-User")} end
          if path == "/enrich" then
            local res, err = upstream.call("other", {path = "/users/7?x=1", headers = {["X-Asked"] = "yes"}, timeout = 1})
            if not res then request.respond(502, err) end
            request.set_header("X-Sub-Status", tostring(res.status))
            request.set_header("X-Sub-Type", res.headers["content-type"])
            request.set_header("X-Sub-Uri", json.decode(res.body).uri)
          end
          if path == "/slowcall" then
            local res, err = upstream.call("other", {path = "/delay/1000", timeout = 0.1})
            request.respond(504, err)
          end
        end }
        """

    static func config(main: [Int], other: Int) -> String {
        """
        listeners:
          - name: test
            address: 127.0.0.1:@PORT@
        upstreams:
          main:
            targets: [ \(main.map { "\"127.0.0.1:\($0)\"" }.joined(separator: ", ")) ]
            passive_health: { failures: 100 }
          other:
            targets: [ "127.0.0.1:\(other)" ]
        routes:
          - match: { path_prefix: / }
            upstream: main
            host_header: target
            policy: route.lua
        """
    }

    @Test func choosesUpstreamsTargetsAndTries() async throws {
        let a = try EchoProcess(), b = try EchoProcess(), other = try EchoProcess()
        let dead = try RawClient.freePort()
        try await withGateway(Self.config(main: [a.port, b.port], other: other.port), workers: 1, scripts: ["route.lua": Self.policy]) { gw in
            let client = try gw.client()
            #expect(UpstreamResilienceTests.servedBy(try client.request("GET", "/use")) == "127.0.0.1:\(other.port)")
            #expect(UpstreamResilienceTests.servedBy(try client.request("GET", "/target", headers: [("X-Port", "\(b.port)")])) == "127.0.0.1:\(b.port)")
            #expect(try client.request("GET", "/bad-target").status == 500)
            // A script-chosen target that is down: one try, no failover.
            #expect(try client.request("GET", "/target", headers: [("X-Port", "\(dead)")]).status == 502)
            // The same hash key, the same target.
            var targets: Set<String> = []
            for _ in 0..<10 {
                if let by = UpstreamResilienceTests.servedBy(try client.request("GET", "/hashed", headers: [("X-User", "ann")])) { targets.insert(by) }
            }
            #expect(targets.count == 1)
        }
        // retries = 0: a try that fails is not retried, though the route's upstream would.
        try await withGateway(Self.config(main: [dead, a.port], other: other.port), workers: 1, scripts: ["route.lua": Self.policy]) { gw in
            let client = try gw.client()
            var statuses: [Int] = []
            for _ in 0..<4 { statuses.append(try client.request("GET", "/noretry").status) }
            #expect(statuses.contains(502), "\(statuses)")
            for _ in 0..<4 { #expect(try client.request("GET", "/plain").status == 200) }
        }
    }

    @Test func subRequestsAreAwaitedWithTheirOwnTimeout() async throws {
        let main = try EchoProcess(), other = try EchoProcess()
        try await withGateway(Self.config(main: [main.port], other: other.port), workers: 1, scripts: ["route.lua": Self.policy]) { gw in
            let client = try gw.client()
            let r = try client.request("GET", "/enrich")
            #expect(r.status == 200)
            #expect(r.echoed("X-Sub-Status") == ["200"] && r.echoed("X-Sub-Type") == ["application/json"])
            #expect(r.echoed("X-Sub-Uri") == ["/users/7?x=1"])
            let started = Date()
            let slow = try client.request("GET", "/slowcall")
            #expect(slow.status == 504 && slow.text == "timeout")
            #expect(Date().timeIntervalSince(started) < 0.8)
        }
    }

    /// A sub-request counts as a try of its target: failures to reach it feed passive health
    /// (the target is ejected, and the next calls go to the one that answers) and the breaker,
    /// and an idempotent call that could not reach one target is retried on another.
    @Test func subRequestsFeedPassiveHealth() async throws {
        let main = try EchoProcess(), other = try EchoProcess()
        let dead = try RawClient.freePort()
        let yaml = """
            listeners:
              - name: test
                address: 127.0.0.1:@PORT@
            upstreams:
              main:
                targets: [ "127.0.0.1:\(main.port)" ]
              other:
                targets: [ "127.0.0.1:\(dead)", "127.0.0.1:\(other.port)" ]
                passive_health: { failures: 2, eject: 30s }
            routes:
              - match: { path_prefix: / }
                upstream: main
                policy: route.lua
            """
        let policy = """
            return { access = function()
              local res, err = upstream.call("other", {path = "/x", timeout = 1})
              request.respond(res and 200 or 502, err or "ok")
            end }
            """
        try await withGateway(yaml, workers: 1, scripts: ["route.lua": policy]) { gw in
            let client = try gw.client()
            var statuses: [Int] = []
            for _ in 0..<8 { statuses.append(try client.request("GET", "/call").status) }
            let ejected = await gw.gateway.ejectedTargets()
            #expect(ejected["127.0.0.1:\(dead)"] != nil, "\(ejected)")
            // A GET that found the dead target went on to the live one (a retry, as a proxied try's).
            #expect(statuses.allSatisfy { $0 == 200 }, "\(statuses)")
            // Once the dead target is out, every call reaches the live one.
            var after: [Int] = []
            for _ in 0..<6 { after.append(try client.request("GET", "/call").status) }
            #expect(after.allSatisfy { $0 == 200 }, "before \(statuses), after \(after)")
        }
    }

    /// `upstream.call` goes through the upstream's own pool, as a proxied request's tries do:
    /// sequential calls share one kept-alive connection, a pooled connection the origin
    /// dropped is replaced once without failing the call, and every call is counted in the
    /// upstream's try metrics.
    @Test func subRequestsUseTheUpstreamsKeptAlivePool() async throws {
        let yaml = """
            listeners:
              - name: test
                address: 127.0.0.1:@PORT@
            admin:
              address: 127.0.0.1:0
            upstreams:
              echo:
                targets: [ "@ECHO@" ]
            routes:
              - match: { path_prefix: / }
                upstream: echo
                policy: call.lua
            """
        let policy = """
            return { access = function()
              local res, err = upstream.call("echo", {path = request.path(), timeout = 2})
              if not res then request.respond(502, err) end
              request.respond(res.status, res.headers["content-type"])
            end }
            """
        try await withGateway(yaml, workers: 1, scripts: ["call.lua": policy]) { gw in
            let client = try gw.client()
            for _ in 0..<30 {
                let r = try client.request("GET", "/x")
                #expect(r.status == 200 && r.text == "application/json", "\(r.status) \(r.text)")
            }
            #expect(gw.stats.accepted.withLockedValue { $0 } == 1, "30 calls opened \(gw.stats.accepted.withLockedValue { $0 }) connections")
            // `/stale-next` answers, then drops its connection when the next request arrives on it.
            #expect(try client.request("GET", "/stale-next").status == 200)
            let after = try client.request("GET", "/x")
            #expect(after.status == 200, "\(after.status) \(after.text)")
            #expect(gw.stats.accepted.withLockedValue { $0 } == 2)
            let samples = MetricsTests.samples(await gw.gateway.metricsText())
            #expect(MetricsTests.value(samples, "moongate_upstream_duration_seconds_count", ["upstream": "echo"]) == 32)
        }
    }
}
