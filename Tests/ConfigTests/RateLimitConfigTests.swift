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
        #expect(found.contains { $0.contains("redis.nowhere: give address (host:port), cluster (seed addresses) or sentinel") })
        #expect(found.contains { $0.contains("rate_limit.default_store: unknown store \"elsewhere\"") })
    }

    @Test func readsClusterAndSentinelDeploymentsWithTLS() throws {
        let c = try ConfigLoader.parse(
            Self.base + """

                redis:
                  limits:
                    cluster: [10.0.0.1:7000, "10.0.0.2:7000"]
                    username: gw
                    password: pw
                    tls: { ca_file: /etc/ca.pem, sni: redis.internal }
                  ha:
                    sentinel: { addresses: [10.0.0.9:26379], master: mymaster, password: sp, recheck: 500ms }
                    database: 3
                rate_limit:
                  default_store: limits
                """, file: "gateway.yaml")
        let cluster = try #require(c.redis.first { $0.name == "limits" })
        #expect(cluster.topology == .cluster(seeds: [SocketAddressSpec(host: "10.0.0.1", port: 7000), SocketAddressSpec(host: "10.0.0.2", port: 7000)]))
        #expect(cluster.address == SocketAddressSpec(host: "10.0.0.1", port: 7000))
        #expect(cluster.tls?.caFile == "/etc/ca.pem" && cluster.tls?.sni == "redis.internal" && cluster.tls?.verify == true)
        let ha = try #require(c.redis.first { $0.name == "ha" })
        var sentinel = RedisSentinel(addresses: [SocketAddressSpec(host: "10.0.0.9", port: 26379)], master: "mymaster")
        sentinel.password = "sp"
        sentinel.recheck = .milliseconds(500)
        #expect(ha.topology == .sentinel(sentinel) && ha.database == 3 && ha.tls == nil)
    }

    @Test func refusesMixedOrIncompleteDeployments() {
        let yaml = Self.base + """

            redis:
              both: { address: 127.0.0.1:6379, cluster: [127.0.0.1:7000] }
              emptyseeds: { cluster: [] }
              db: { cluster: [127.0.0.1:7000], database: 1 }
              nomaster: { sentinel: { addresses: [127.0.0.1:26379] } }
              badtls: { address: 127.0.0.1:6379, tls: { cert: /c.pem } }
            """
        let found: [String]
        do {
            _ = try ConfigLoader.parse(yaml, file: "gateway.yaml")
            found = []
        } catch {
            found = error.diagnostics.map(\.description)
        }
        #expect(found.contains { $0.contains("redis.both: give one of address, cluster and sentinel, not address and cluster") }, "\(found)")
        #expect(found.contains { $0.contains("redis.emptyseeds.cluster: expected at least one host:port") }, "\(found)")
        #expect(found.contains { $0.contains("redis.db.database: a Redis Cluster has only database 0") }, "\(found)")
        #expect(found.contains { $0.contains("redis.nomaster.sentinel.master: required") }, "\(found)")
        #expect(found.contains { $0.contains("redis.badtls.tls.key: a client certificate needs both") }, "\(found)")
    }
}
