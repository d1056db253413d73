import Config
import Foundation
import Harness
import RateLimit
import Redis
import RedisTestServer
import Testing

/// `moongate test` with `redis_bucket`: a Redis store is served from memory by default, or
/// by a real `redis-server` (`--redis`); the fake clock drives refill either way, and the
/// same test file passes on both.
@Suite(.serialized) struct HarnessBucketTests {
    static let policy = """
        -- Checked once, at load; a bad one raises there.
        local prepared = redis_bucket.limiter{capacity = 3, rate = 2}
        local _, bad = pcall(redis_bucket.limiter, {capacity = 3, rate = 2, store = "nowhere"})
        return {
          access = function()
            if request.header("X-Bad") then request.respond(200, bad) end
            local options = request.header("X-Prepared") and prepared or {capacity = 3, rate = 2}
            local ok, remaining, retry, err = redis_bucket.take(request.header("X-User"), options)
            if not ok then request.respond(429, tostring(retry)) end
            request.set_header("X-Remaining", tostring(remaining))
          end,
        }
        """

    static let test = """
        describe("a Redis bucket under the fake clock", function()
          local function get(user) return harness.request{path = "/", headers = {["X-User"] = user or "ann"}} end
          it("empties", function()
            for left = 2, 0, -1 do assert.equals(tostring(left), get().upstream.headers["x-remaining"]) end
            local res = get()
            assert.equals(429, res.status)
            assert.equals("0.5", res.body)
          end)
          it("refills as the clock moves", function()
            for _ = 1, 4 do get() end
            harness.clock.advance(0.5)
            assert.equals(200, get().status)
            assert.equals(429, get().status)
            harness.clock.advance(10)
            assert.equals("2", get().upstream.headers["x-remaining"])
          end)
          it("starts each test with full buckets", function()
            assert.equals("2", get().upstream.headers["x-remaining"])
          end)
          it("takes a limiter made once in place of the options", function()
            local function prepared() return harness.request{path = "/", headers = {["X-User"] = "cy", ["X-Prepared"] = "1"}} end
            for left = 2, 0, -1 do assert.equals(tostring(left), prepared().upstream.headers["x-remaining"]) end
            assert.equals(429, prepared().status)
            assert.equals(429, get("cy").status, "the same bucket either way")
            assert.matches('unknown store "nowhere"', harness.request{path = "/", headers = {["X-Bad"] = "1"}}.body)
          end)
          it("is per key", function()
            for _ = 1, 4 do get("ann") end
            assert.equals(200, get("bob").status)
          end)
        end)
        """

    func run(redis: SocketAddressSpec?) throws -> [FileResult] {
        let folder = FileManager.default.temporaryDirectory.appendingPathComponent("moongate-buckets-\(UUID().uuidString)").path
        try FileManager.default.createDirectory(atPath: folder + "/policies", withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(atPath: folder) }
        try """
        listeners: [{ name: test, address: "127.0.0.1:0" }]
        redis:
          shared: { address: "127.0.0.1:1" }
        upstreams:
          echo: { targets: ["127.0.0.1:1"] }
        routes:
          - { name: all, match: { path_prefix: / }, upstream: echo, policy: limit.lua }
        """.write(toFile: folder + "/gateway.yaml", atomically: true, encoding: .utf8)
        try Self.policy.write(toFile: folder + "/policies/limit.lua", atomically: true, encoding: .utf8)
        try Self.test.write(toFile: folder + "/policies/limit_test.lua", atomically: true, encoding: .utf8)
        let config = try ConfigLoader.load(path: folder + "/gateway.yaml")
        // The only Redis server is the default store.
        #expect(config.rateLimit.defaultStore == "shared")
        let clock = FakeClock()
        let buckets = try RateLimitModules.forTests(config: config, clock: clock, redis: redis)
        let runner = TestRunner(config: config, clock: clock, modules: buckets.modules, beforeEach: buckets.reset)
        return runner.run(TestRunner.discover([folder + "/policies"]))
    }

    @Test func inMemory() throws {
        let results = try run(redis: nil)
        #expect(TestReport.totals(results).ok, "\(TestReport.text(results))")
        #expect(TestReport.totals(results).passed == 5)
    }

    @Test func againstARealRedis() throws {
        let redis = try RedisProcess()
        let results = try run(redis: SocketAddressSpec(host: "127.0.0.1", port: redis.port))
        #expect(TestReport.totals(results).ok, "\(TestReport.text(results))")
        #expect(TestReport.totals(results).passed == 5)
    }
}
