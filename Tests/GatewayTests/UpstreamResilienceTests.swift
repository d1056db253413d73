import Foundation
import NIOCore
import NIOPosix
import Telemetry
import Testing

/// Balancing, passive health, retries with failover and the retry budget, on real sockets
/// with real upstream processes killed and restarted.
@Suite(.serialized) struct UpstreamResilienceTests {
    static func config(targets: [Int], extra: String = "", route: String = "") -> String {
        """
        listeners:
          - name: test
            address: 127.0.0.1:@PORT@
        upstreams:
          app:
            targets: [ \(targets.map { "\"127.0.0.1:\($0)\"" }.joined(separator: ", ")) ]
            connect_timeout: 500ms
            read_timeout: 2s
        \(extra)
        routes:
          - name: app
            match: { path_prefix: / }
            upstream: app
            host_header: target
        \(route)
        """
    }

    /// Which target served: the echo upstream answers with the Host it got (`host:port`).
    static func servedBy(_ r: RawClient.Response) -> String? {
        (r.json["headers"] as? [[String]])?.first { $0.first?.lowercased() == "host" }?.last
    }

    @Test func aKilledTargetLosesNoRequestIsEjectedAndComesBack() async throws {
        let echoes = try (0..<3).map { _ in try EchoProcess() }
        let yaml = Self.config(targets: echoes.map(\.port), extra: "    passive_health: { failures: 1, eject: 1s, max_eject: 1s }")
        try await withGateway(yaml, workers: 2) { gw in
            let load = Load(port: gw.port, clients: 8, target: "/load")
            pause(0.5)
            echoes[1].kill()
            pause(1.5)
            let ejected = await gw.gateway.ejectedTargets()
            try await load.stop()
            #expect(load.failures.value == 0, "failed requests: \(load.failures.value) of \(load.served.value + load.failures.value)")
            #expect(load.served.value > 200)
            #expect(ejected["127.0.0.1:\(echoes[1].port)", default: 0] >= 1, "\(ejected)")

            // Back on the same port: after its eject time, it serves again.
            try echoes[1].start()
            let client = try gw.client()
            var seen: Set<String> = []
            let deadline = Date().addingTimeInterval(5)
            while seen.count < 3, Date() < deadline {
                if let by = Self.servedBy(try client.request("GET", "/x")) { seen.insert(by) }
                pause(0.01)
            }
            #expect(seen.contains("127.0.0.1:\(echoes[1].port)"), "\(seen)")
        }
    }

    @Test func allTargetsDownIsA503Quickly() async throws {
        let dead = try (0..<2).map { _ in try RawClient.freePort() }
        try await withGateway(Self.config(targets: dead, extra: "    passive_health: { failures: 1, eject: 30s }"), workers: 1) { gw in
            let client = try gw.client()
            #expect(try client.request("GET", "/x").status == 502)  // both tried, both refused
            let started = Date()
            let r = try client.request("GET", "/x")
            #expect(r.status == 503 && r.json["error"] as? String == "no healthy upstream target")
            #expect(Date().timeIntervalSince(started) < 0.2)
        }
    }

    @Test func aPOSTIsNotRetriedUnlessTheRouteSaysSo() async throws {
        let alive = try EchoProcess()
        let dead = try RawClient.freePort()
        // Round robin starts with the first target: the dead one.
        let yaml = Self.config(targets: [dead, alive.port], extra: "    passive_health: { failures: 100 }")
        try await withGateway(yaml, workers: 1) { gw in
            let client = try gw.client()
            #expect(try client.request("POST", "/x", body: Array("a".utf8)).status == 502)
            #expect(try client.request("POST", "/x", body: Array("b".utf8)).status == 200)
            // A GET that meets the dead target is retried on the live one.
            for _ in 0..<4 { #expect(try client.request("GET", "/x").status == 200) }
        }
        try await withGateway(yaml.replacingOccurrences(of: "    host_header: target\n", with: "    host_header: target\n    retry_non_idempotent: true\n"), workers: 1) { gw in
            let client = try gw.client()
            for _ in 0..<4 { #expect(try client.request("POST", "/x").status == 200) }
        }
    }

    /// Every target fails: retries stay within the budget (minimum + ratio x requests), so an
    /// outage is not multiplied by the retry count.
    @Test func theRetryBudgetHoldsWhenEveryTargetFails() async throws {
        let group = MultiThreadedEventLoopGroup(numberOfThreads: 1)
        let accepted = LockedCounter()
        // Targets that accept and hang up at once: each try is counted.
        var channels: [Channel] = []
        for _ in 0..<3 {
            channels.append(
                try await ServerBootstrap(group: group)
                    .childChannelInitializer { channel in
                        accepted.add()
                        return channel.close()
                    }
                    .bind(host: "127.0.0.1", port: 0).get())
        }
        let yaml = Self.config(
            targets: channels.map { $0.localAddress!.port! },
            extra: "    retries: 2\n    retry_budget: { ratio: 0.2, min: 3 }\n    passive_health: { failures: 1000 }\n"
                + "    circuit_breaker: { failures: 10000, min_requests: 1000000 }")
        try await withGateway(yaml, workers: 1) { gw in
            let client = try gw.client()
            for _ in 0..<50 { #expect(try client.request("GET", "/x").status == 502) }
            pause(0.2)
            // 50 first tries, and at most 3 + 0.2 x 50 retries (without a budget: 150 tries).
            #expect(accepted.value >= 50 && accepted.value <= 63, "tries: \(accepted.value)")
        }
        for c in channels { try? await c.close() }
        try? await group.shutdownGracefully()
    }

    @Test func hashingKeepsAKeyOnOneTarget() async throws {
        let echoes = try (0..<3).map { _ in try EchoProcess() }
        let yaml = Self.config(targets: echoes.map(\.port), extra: "    balancer: hash\n    hash_key: header:X-User")
        try await withGateway(yaml, workers: 2) { gw in
            var byUser: [String: Set<String>] = [:]
            for i in 0..<60 {
                let user = "user-\(i % 6)"
                let r = try gw.client().request("GET", "/x", headers: [("X-User", user)])
                if let by = Self.servedBy(r) { byUser[user, default: []].insert(by) }
            }
            #expect(byUser.count == 6 && byUser.values.allSatisfy { $0.count == 1 }, "\(byUser)")
            #expect(Set(byUser.values.compactMap(\.first)).count >= 2, "keys spread over targets")
        }
    }

    /// A target answering 5xx: its breaker opens (the balancer skips it), half-opens after the
    /// open time with one probe, and closes when the probe succeeds.
    @Test func aFailingTargetsBreakerOpensHalfOpensAndCloses() async throws {
        let bad = try await TestHTTPServer { _ in .init(status: 503, body: #"{"from":"bad"}"#) }
        let good = try EchoProcess()
        let yaml = Self.config(
            targets: [bad.port, good.port],
            extra: "    circuit_breaker: { failures: 3, open: 300ms, probes: 1 }\n    passive_health: { failures: 1000 }")
        try await withGateway(yaml, workers: 1) { gw in
            let client = try gw.client()
            var statuses: [Int] = []
            for _ in 0..<12 { statuses.append(try client.request("GET", "/x").status) }
            // Three 503s from the bad target open its breaker; then only the good one answers.
            #expect(statuses.filter { $0 == 503 }.count == 3, "\(statuses)")
            #expect(statuses.suffix(6).allSatisfy { $0 == 200 })
            #expect(await gw.gateway.breakerStates()["127.0.0.1:\(bad.port)"] == ["open"])
            // The metrics say so: one worker's breaker for the target is open.
            let target = "127.0.0.1:\(bad.port)"
            func breaker() async -> String? {
                let samples = PrometheusText.parse(await gw.gateway.metricsText())
                return samples.first { $0.name == "moongate_upstream_breaker_state" && $0.labels["target"] == target && $0.value == 1 }?
                    .labels["state"]
            }
            #expect(await breaker() == "open")

            // Healed, but slow enough that the probe can be seen in flight even when a loaded
            // suite makes each metrics read take a few hundred milliseconds.
            bad.answer { _ in .init(status: 200, body: #"{"from":"bad"}"#, delay: .milliseconds(1500)) }
            pause(0.35)
            let prober = Thread {
                let c = try? RawClient(port: gw.port)
                for _ in 0..<4 { _ = try? c?.request("GET", "/x") }
            }
            prober.start()
            var seen: Set<String> = []
            let deadline = Date().addingTimeInterval(10)
            while Date() < deadline {
                if let state = await breaker() { seen.insert(state) }
                if seen.contains("half_open"), seen.contains("closed") { break }
                pause(0.02)
            }
            #expect(seen.contains("half_open") && seen.contains("closed"), "\(seen)")
            while !prober.isFinished { pause(0.02) }
        }
        await bad.stop()
    }

    /// Connections per target are capped; requests past the cap wait in a bounded queue, and
    /// past the queue get `503` at once.
    @Test func poolLimitsQueueThenRefuse() async throws {
        let echo = try EchoProcess()
        let yaml = Self.config(targets: [echo.port]).replacingOccurrences(
            of: "    read_timeout: 2s\n", with: "    read_timeout: 2s\n    pool: { max_connections: 2, queue: 2, queue_timeout: 3s }\n")
        try await withGateway(yaml, workers: 1) { gw in
            let results = LockedCounter(), refused = LockedCounter(), fast = LockedCounter()
            let threads = (0..<6).map { _ in
                Thread {
                    let started = Date()
                    guard let r = try? RawClient(port: gw.port).request("GET", "/delay/400") else { return }
                    if r.status == 200 { results.add() }
                    if r.status == 503, r.json["error"] as? String == "upstream connection pool full" {
                        refused.add()
                        if Date().timeIntervalSince(started) < 0.3 { fast.add() }
                    }
                }
            }
            threads.forEach { $0.start() }
            pause(0.2)
            let open = await gw.gateway.connectionCounts().upstreams
            while threads.contains(where: { !$0.isFinished }) { pause(0.02) }
            #expect(open <= 2, "upstream connections: \(open)")
            // Two served at once, two after waiting their turn, two refused without waiting.
            #expect(results.value == 4 && refused.value == 2 && fast.value == 2, "200: \(results.value), 503: \(refused.value)")
        }
    }

    /// Active checks: a target whose probe path fails is taken out of rotation after
    /// `unhealthy` probes, and put back after `healthy` good ones.
    @Test func activeHealthChecksTakeATargetOutAndBack() async throws {
        let sick = LockedFlag()
        let a = try await TestHTTPServer { request in
            if request.uri == "/healthz" { return .init(status: sick.isSet ? 503 : 200, body: "{}") }
            return .init(body: #"{"from":"a"}"#)
        }
        let b = try await TestHTTPServer { request in .init(body: #"{"from":"b"}"#) }
        let yaml = Self.config(
            targets: [a.port, b.port],
            extra: "    health_check: { path: /healthz, interval: 50ms, timeout: 500ms, healthy: 2, unhealthy: 2 }")
        try await withGateway(yaml, workers: 2) { gw in
            func servedBy() throws -> Set<String> {
                var seen: Set<String> = []
                for _ in 0..<10 { seen.insert(try gw.client().request("GET", "/x").json["from"] as? String ?? "?") }
                return seen
            }
            let before = try servedBy()
            #expect(before == ["a", "b"])
            sick.set()
            let out = try await eventually { try servedBy() == ["b"] }
            #expect(out)
            a.answer { request in
                request.uri == "/healthz" ? .init(body: "{}") : .init(body: #"{"from":"a"}"#)
            }
            let back = try await eventually { try servedBy() == ["a", "b"] }
            #expect(back)
        }
        await a.stop()
        await b.stop()
    }

    /// Upstream settings are part of the generation: a reload changes them and keeps the
    /// pooled connections to targets that stay.
    @Test func aReloadKeepsPooledConnectionsToTargetsThatStay() async throws {
        try await withGateway(TestGateway.defaultConfig, workers: 1) { gw in
            let client = try gw.client()
            for _ in 0..<5 { #expect(try client.request("GET", "/echo").status == 200) }
            let before = gw.stats.accepted.withLockedValue { $0 }
            let changed = TestGateway.defaultConfig.replacingOccurrences(
                of: "    read_timeout: 500ms\n", with: "    read_timeout: 700ms\n    retries: 1\n    balancer: least_request\n")
            #expect(try await gw.rewrite(changed).succeeded)
            for _ in 0..<5 { #expect(try client.request("GET", "/echo").status == 200) }
            #expect(gw.stats.accepted.withLockedValue { $0 } == before, "the reload opened new upstream connections")
        }
    }
}
