import Testing

@testable import Config

@Suite struct RateLimitConfigTests {
    static let base = ConfigLoaderTests.minimal

    @Test func readsRedisServersAndTheirDefaults() throws {
        let c = try ConfigLoader.parse(
            Self.base + """

                redis:
                  shared:
                    address: 10.0.0.5:6379
                    username: gw
                    password: ${REDIS_PASSWORD}
                    database: 2
                    command_timeout: 20ms
                    circuit: { failures: 5, open: 1s, max_open: 30s }
                """, file: "gateway.yaml", environment: ["REDIS_PASSWORD": "pw"])
        let r = c.redis[0]
        #expect(r.name == "shared" && r.address == SocketAddressSpec(host: "10.0.0.5", port: 6379))
        #expect(r.username == "gw" && r.password == "pw" && r.database == 2)
        #expect(r.commandTimeout == .milliseconds(20) && r.connectTimeout == .milliseconds(100))
        #expect(r.circuitFailures == 5 && r.circuitOpen == .seconds(1) && r.circuitMaxOpen == .seconds(30))
        #expect(r.keyPrefix == "moongate:rl:")
        // The only server is the default store; without one, local is.
        #expect(c.rateLimit.defaultStore == "shared")
        #expect(try ConfigLoader.parse(Self.base, file: "g.yaml").rateLimit.defaultStore == "local")
        #expect(c.routes[0].rateLimitFailure == .open)
    }

    @Test func refusesWhatCannotWork() {
        let yaml = Self.base.replacingOccurrences(of: "upstream: app", with: "upstream: app\n    rate_limit_failure: maybe") + """

            redis:
              local: { address: 127.0.0.1:6379 }
              braces: { address: 127.0.0.1:6379, key_prefix: "rl:{x}" }
              nowhere: {}
            rate_limit:
              default_store: elsewhere
            """
        let found: [String]
        do {
            _ = try ConfigLoader.parse(yaml, file: "gateway.yaml")
            found = []
        } catch {
            found = error.diagnostics.map(\.description)
        }
        #expect(found.contains { $0.contains("routes[0].rate_limit_failure: expected open") })
        #expect(found.contains { $0.contains("redis.local: \"local\" names the gateway's own store") })
        #expect(found.contains { $0.contains("redis.braces.key_prefix: must not contain {") })
        #expect(found.contains { $0.contains("redis.nowhere.address: required") })
        #expect(found.contains { $0.contains("rate_limit.default_store: unknown store \"elsewhere\"") })
    }
}
