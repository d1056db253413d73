import Foundation
import Redis
import RedisTestServer
import Testing

/// `redis_bucket` through the gateway on real sockets: the `limit` helper's answers, the
/// accuracy of the local store across event loops and of Redis across two gateways, and
/// Redis dying and coming back under load.
@Suite(.serialized) struct RateLimitTests {
    static func config(redis: Int, commandTimeout: String = "50ms") -> String {
        """
        listeners:
          - name: test
            address: 127.0.0.1:@PORT@
        redis:
          shared:
            address: 127.0.0.1:\(redis)
            command_timeout: \(commandTimeout)
            circuit: { failures: 3, open: 100ms, max_open: 400ms }
        rate_limit:
          default_store: local
        upstreams:
          echo:
            targets: [ "@ECHO@" ]
        routes:
          - name: closed
            match: { path_prefix: /closed }
            upstream: echo
            policy: limit.lua
            rate_limit_failure: closed
          - name: open
            match: { path_prefix: / }
            upstream: echo
            policy: limit.lua
        """
    }

    /// The bucket's settings come from the request, so each test picks its own.
    static let limit = """
        return {
          access = function()
            redis_bucket.limit(request.header("X-Key") or "all", {
              capacity = tonumber(request.header("X-Capacity") or "50"),
              rate = tonumber(request.header("X-Rate") or "200"),
              store = request.header("X-Store") or "local",
            })
            request.set_header("X-Limited-By", "moongate")
          end,
        }
        """

    static func headers(key: String, store: String, capacity: Int, rate: Double) -> [(String, String)] {
        [("X-Key", key), ("X-Store", store), ("X-Capacity", "\(capacity)"), ("X-Rate", "\(rate)")]
    }

    @Test(arguments: ["local", "shared"]) func limitSetsHeadersAndAnswers429(store: String) async throws {
        let redis = try RedisProcess()
        try await withGateway(Self.config(redis: redis.port), scripts: ["limit.lua": Self.limit]) { gw in
            let client = try gw.client()
            let h = Self.headers(key: "k-\(store)", store: store, capacity: 2, rate: 0.5)
            let first = try client.request("GET", "/x", headers: h)
            #expect(first.status == 200)
            #expect(first.header("RateLimit-Limit") == "2" && first.header("RateLimit-Remaining") == "1" && first.header("RateLimit-Reset") == "2")
            #expect(first.echoed("X-Limited-By") == ["moongate"])
            let second = try client.request("GET", "/x", headers: h)
            #expect(second.status == 200 && second.header("RateLimit-Remaining") == "0" && second.header("RateLimit-Reset") == "4")
            let third = try client.request("GET", "/x", headers: h)
            #expect(third.status == 429)
            #expect(third.header("Retry-After") == "2" && third.header("RateLimit-Remaining") == "0")
            #expect(third.header("Content-Type") == "application/json")
            let body = try JSONSerialization.jsonObject(with: Data(third.body)) as? [String: String]
            #expect(body?["error"] == "rate limited" && body?["request_id"] == third.header("X-Request-Id"))
            // The refused request never reached the upstream; the connection stays usable.
            #expect(try client.request("GET", "/x", headers: Self.headers(key: "other", store: store, capacity: 2, rate: 0.5)).status == 200)
        }
    }

    /// Clients sending twice the allowed rate for four seconds: the number allowed is within
    /// 1% of capacity + rate x seconds.
    @Test func theLocalStoreIsExactAcrossEventLoops() async throws {
        let redis = try RedisProcess()
        try await withGateway(Self.config(redis: redis.port), workers: 2, scripts: ["limit.lua": Self.limit]) { gw in
            let headers = Self.headers(key: "accuracy-local", store: "local", capacity: 50, rate: 200)
            let load = PacedLoad(ports: [gw.port], clients: 8, perClientRate: 50, seconds: 4, headers: headers)
            try await load.wait()
            try Self.expectAccurate(load, capacity: 50, rate: 200)
        }
    }

    @Test func redisIsExactAcrossTwoGateways() async throws {
        let redis = try RedisProcess()
        let config = Self.config(redis: redis.port, commandTimeout: "500ms")
        try await withGateway(config, workers: 2, scripts: ["limit.lua": Self.limit]) { a in
            try await withGateway(config, workers: 2, scripts: ["limit.lua": Self.limit]) { b in
                let headers = Self.headers(key: "accuracy-redis", store: "shared", capacity: 50, rate: 200)
                let load = PacedLoad(ports: [a.port, b.port], clients: 8, perClientRate: 50, seconds: 4, headers: headers)
                try await load.wait()
                try Self.expectAccurate(load, capacity: 50, rate: 200)
                // Both gateways took part.
                #expect(load.allowedByPort[a.port, default: 0] > 50 && load.allowedByPort[b.port, default: 0] > 50, "\(load.allowedByPort)")
            }
        }
    }

    static func expectAccurate(_ load: PacedLoad, capacity: Double, rate: Double) throws {
        let expected = capacity + rate * load.span
        let allowed = Double(load.allowed)
        print("rate-limit accuracy: allowed \(load.allowed), capacity + rate x seconds = \(expected) (\(load.span) s), refused \(load.refused)")
        #expect(load.other == 0, "answers other than 200 and 429: \(load.other)")
        #expect(load.refused > 0, "the load never hit the limit")
        #expect(abs(allowed - expected) <= expected * 0.01, "allowed \(allowed), expected \(expected) over \(load.span) s")
    }

    /// Redis killed under load: each route follows its failure mode at once (no request
    /// waits past the command timeout), and limiting resumes by itself when Redis is back.
    @Test func redisDownFollowsTheFailureModeAndRecovers() async throws {
        let redis = try RedisProcess()
        try await withGateway(Self.config(redis: redis.port), workers: 2, scripts: ["limit.lua": Self.limit]) { gw in
            let h = Self.headers(key: "outage", store: "shared", capacity: 5, rate: 1)
            let client = try gw.client()
            for _ in 0..<5 { #expect(try client.request("GET", "/open", headers: h).status == 200) }
            #expect(try client.request("GET", "/open", headers: h).status == 429)
            #expect(try client.request("GET", "/closed", headers: h).status == 429)

            redis.kill()
            var slowest = 0.0
            var open: [Int: Int] = [:], closed: [Int: Int] = [:]
            var closedBody = ""
            for _ in 0..<50 {
                let started = Date()
                open[try client.request("GET", "/open", headers: h).status, default: 0] += 1
                let c = try client.request("GET", "/closed", headers: h)
                closed[c.status, default: 0] += 1
                closedBody = String(decoding: c.body, as: UTF8.self)
                slowest = max(slowest, Date().timeIntervalSince(started))
            }
            #expect(open == [200: 50], "fail open: \(open)")
            #expect(closed == [429: 50], "fail closed: \(closed)")
            #expect(closedBody.contains("rate limiter unavailable"))
            #expect(slowest < 0.5, "a request pair took \(slowest) s")
            // Every such decision is counted.
            let failures = await gw.gateway.rateLimitFailures()
            #expect(failures.open == 50 && failures.closed == 50, "\(failures)")

            try redis.start()
            // Within the circuit's longest open time, Redis is used again: the bucket is new
            // (Redis lost it), so five are allowed and the sixth refused.
            var resumed = false
            let deadline = Date().addingTimeInterval(5)
            while !resumed, Date() < deadline {
                resumed = try client.request("GET", "/open", headers: h).header("RateLimit-Limit") == "5"
                if !resumed { pause(0.05) }
            }
            #expect(resumed)
            var statuses: [Int] = []
            for _ in 0..<6 { statuses.append(try client.request("GET", "/open", headers: h).status) }
            #expect(statuses.contains(429), "limiting did not resume: \(statuses)")
        }
    }
}

/// Client threads each sending `perClientRate` requests a second on a fixed schedule, over
/// kept-alive connections spread across `ports`; counts 200s and 429s and when the first
/// request went and the last allowed one came back.
final class PacedLoad: @unchecked Sendable {
    private let lock = NSLock()
    private(set) var allowed = 0
    private(set) var refused = 0
    private(set) var other = 0
    private(set) var allowedByPort: [Int: Int] = [:]
    private var firstSent = Date.distantFuture
    private var lastAllowed = Date.distantPast
    private var threads: [Thread] = []

    /// Seconds from the first request sent to the last allowed answer.
    var span: Double { lock.withLock { lastAllowed.timeIntervalSince(firstSent) } }

    init(ports: [Int], clients: Int, perClientRate: Double, seconds: Double, headers: [(String, String)]) {
        let start = Date().addingTimeInterval(0.2)
        for i in 0..<clients {
            let port = ports[i % ports.count]
            // Random phases: fixed ones can line every refill up with one port's clients.
            let offset = Double.random(in: 0..<1) / perClientRate
            let thread = Thread { [self] in
                let client = try? RawClient(port: port)
                var n = 0.0
                while true {
                    let due = start.addingTimeInterval(offset + n / perClientRate)
                    if due.timeIntervalSince(start) >= seconds { break }
                    let wait = due.timeIntervalSinceNow
                    if wait > 0 { usleep(useconds_t(wait * 1_000_000)) }
                    n += 1
                    let sent = Date()
                    let status = (try? client?.request("GET", "/load", headers: headers).status) ?? 0
                    let now = Date()
                    lock.withLock {
                        if sent < firstSent { firstSent = sent }
                        switch status {
                        case 200:
                            allowed += 1
                            allowedByPort[port, default: 0] += 1
                            if now > lastAllowed { lastAllowed = now }
                        case 429: refused += 1
                        default: other += 1
                        }
                    }
                }
            }
            threads.append(thread)
        }
        threads.forEach { $0.start() }
    }

    func wait() async throws {
        while threads.contains(where: { !$0.isFinished }) { try await Task.sleep(for: .milliseconds(50)) }
    }
}
