import Foundation
import Telemetry
import TestSupport
import Testing

/// The admin listener and what `/metrics` says after real traffic.
@Suite struct MetricsTests {
    static func config(maxSeries: Int = 1000, extra: String = "") -> String {
        """
        listeners:
          - name: main
            address: 127.0.0.1:@PORT@
        admin:
          address: 127.0.0.1:0
        metrics:
          max_series: \(maxSeries)
        access_log:
          to: off
        upstreams:
          echo:
            targets: [ "@ECHO@" ]
        routes:
          - name: api
            match: { path_prefix: /api/ }
            upstream: echo
          - name: scripted
            match: { path_prefix: /scripted/ }
            upstream: echo
            policy: counting.lua
            budget: { instructions: 10000000, memory: 64MB, time: 5s }
        \(extra)
        """
    }

    static let counting = """
        local hits = metrics.counter{name = "shop_hits_total", help = "Hits by user.", labels = {"user"}}
        local sizes = metrics.histogram{name = "shop_size_bytes", help = "Sizes.", labels = {}, buckets = {10, 100, 1000}}
        local live = metrics.gauge{name = "shop_live", help = "A gauge.", labels = {"kind"}}
        return { access = function()
          local user = request.header("x-user")
          if user == "many" then
            for i = 1, 10000 do hits:inc(1, "u" .. i) end
          elseif user then
            hits:inc(1, user)
          end
          sizes:observe(42)
          live:set(7, "a")
          if request.header("x-fail") then error("boom") end
        end }
        """

    static func admin(_ gw: TestGateway, _ path: String) async throws -> RawClient.Response {
        let port = try #require(await gw.gateway.adminPort())
        // Generous: a page of thousands of series on a loaded suite takes a while.
        return try await offThePool { try RawClient(port: port, timeout: 60).request("GET", path) }
    }

    static func samples(_ text: String) -> [PrometheusText.Sample] { PrometheusText.parse(text) }

    /// The value of the sample `name` with exactly `labels`, as Prometheus reads the page.
    static func value(_ samples: [PrometheusText.Sample], _ name: String, _ labels: [String: String] = [:]) -> Double? {
        samples.first { $0.name == name && $0.labels == labels }?.value
    }

    @Test func countersMatchTheRequestsSentAndPromtoolAccepts() async throws {
        try await withGateway(Self.config(), scripts: ["counting.lua": Self.counting]) { gw in
            for _ in 0..<7 { #expect(try gw.client().request("GET", "/api/x").status == 200) }
            for _ in 0..<3 { #expect(try gw.client().request("POST", "/api/x", body: Array("hi".utf8)).status == 200) }
            for _ in 0..<2 { #expect(try gw.client().request("PURGE", "/api/x").status == 200) }
            for _ in 0..<4 { #expect(try gw.client().request("GET", "/nowhere").status == 404) }
            for _ in 0..<5 { #expect(try gw.client().request("GET", "/scripted/a", headers: [("x-user", "ann")]).status == 200) }
            #expect(try gw.client().request("GET", "/scripted/a", headers: [("x-fail", "1")]).status == 500)

            let page = try await Self.admin(gw, "/metrics")
            #expect(page.status == 200)
            #expect(page.header("content-type")?.hasPrefix("text/plain; version=0.0.4") == true)
            let s = Self.samples(page.text)
            #expect(Self.value(s, "moongate_requests_total", ["route": "api", "method": "GET", "status": "200"]) == 7)
            #expect(Self.value(s, "moongate_requests_total", ["route": "api", "method": "POST", "status": "200"]) == 3)
            // A made-up method is counted as OTHER, so clients cannot add series.
            #expect(Self.value(s, "moongate_requests_total", ["route": "api", "method": "OTHER", "status": "200"]) == 2)
            #expect(Self.value(s, "moongate_requests_total", ["route": "_unmatched", "method": "GET", "status": "404"]) == 4)
            #expect(Self.value(s, "moongate_requests_total", ["route": "scripted", "method": "GET", "status": "500"]) == 1)
            #expect(Self.value(s, "moongate_request_duration_seconds_count", ["route": "api"]) == 12)
            #expect(Self.value(s, "moongate_request_duration_seconds_bucket", ["route": "api", "le": "+Inf"]) == 12)
            #expect(Self.value(s, "moongate_upstream_duration_seconds_count", ["upstream": "echo"]) == 17)
            #expect(Self.value(s, "moongate_lua_errors_total", ["script": "counting", "kind": "error"]) == 1)
            #expect(Self.value(s, "shop_hits_total", ["user": "ann"]) == 5)
            #expect(Self.value(s, "shop_size_bytes_bucket", ["le": "100"]) == 6)
            // Each worker set its gauge; the page sums them.
            let live = try #require(Self.value(s, "shop_live", ["kind": "a"]))
            #expect(live == 7 || live == 14)
            #expect(Self.value(s, "moongate_reloads_total", ["result": "success"]) == 0)  // no reload yet
            #expect(page.text.contains("# TYPE moongate_reloads_total counter"))
            #expect(Self.value(s, "moongate_config_generation") == 1)

            // Prometheus's own linter on the live page.
            let file = FileManager.default.temporaryDirectory.appendingPathComponent("metrics-\(UUID().uuidString).txt")
            try page.text.write(to: file, atomically: true, encoding: .utf8)
            defer { try? FileManager.default.removeItem(at: file) }
            let (status, output) = try runTool("/usr/bin/promtool", ["check", "metrics"], stdin: file.path)
            #expect(status == 0, "promtool: \(output)")
        }
    }

    @Test func theLabelCapHoldsAgainstTenThousandValues() async throws {
        try await withGateway(Self.config(maxSeries: 100), workers: 1, scripts: ["counting.lua": Self.counting]) { gw in
            // Ten thousand increments in one request: minutes, not seconds, on a loaded suite.
            #expect(try gw.client(timeout: 120).request("GET", "/scripted/a", headers: [("x-user", "many")]).status == 200)
            let text = try await Self.admin(gw, "/metrics").text
            let series = text.split(separator: "\n").filter { $0.hasPrefix("shop_hits_total{") }
            // 100 kept, and one overflow series with the other 9,900.
            #expect(series.count == 101)
            let s = Self.samples(text)
            #expect(Self.value(s, "shop_hits_total", ["user": "_overflow"]) == 9900)
            #expect(Self.value(s, "moongate_metric_series_overflow_total", ["metric": "shop_hits_total"]) == 9900)
        }
    }

    @Test func healthReadinessAndStatus() async throws {
        try await withGateway(Self.config(), scripts: ["counting.lua": Self.counting]) { gw in
            let health = try await Self.admin(gw, "/healthz")
            #expect(health.status == 200)
            let ready = try await Self.admin(gw, "/readyz")
            #expect(ready.status == 200)
            #expect(try gw.client().request("GET", "/api/x").status == 200)
            // A reload that fails is reported and counted; the last good generation serves on.
            try "routes: [".write(toFile: gw.configPath, atomically: true, encoding: .utf8)
            let result = await gw.gateway.reload()
            #expect(!result.succeeded)
            let status = try await Self.admin(gw, "/status")
            #expect(status.status == 200)
            let json = status.json
            #expect(json["version"] as? String != nil)
            #expect(json["ready"] as? Bool == true)
            #expect((json["config"] as? [String: Any])?["generation"] as? Int == 1)
            let reload = try #require(json["last_reload"] as? [String: Any])
            #expect(reload["succeeded"] as? Bool == false)
            let firstError = (reload["errors"] as? [String])?.first ?? ""
            #expect(firstError.contains("gateway.yaml"))
            let targets = try #require(json["targets"] as? [String: Any])
            let echo = try #require(targets["127.0.0.1:\(gw.echoPort)"] as? [String: Any])
            let workers = try #require(echo["workers"] as? [[String: Any]])
            #expect(workers.contains { $0["breaker"] as? String == "closed" })
            let s = Self.samples(try await Self.admin(gw, "/metrics").text)
            #expect(Self.value(s, "moongate_reloads_total", ["result": "failure"]) == 1)
            #expect(try await Self.admin(gw, "/nope").status == 404)
        }
    }
}
