import Foundation
import Redis
import RedisTestServer
import TestSupport
import Testing

/// `redis_bucket` against the Redis deployments fleets run: a real 3-primary cluster with
/// replicas (slots found from one seed, MOVED and ASK followed, a primary killed under load)
/// and a real Sentinel group (the primary followed through a failover), and a server that
/// takes only TLS and an ACL user. The bucket stays within 1% of capacity + rate x seconds
/// through a failover; requests in the window follow the route's failure mode (closed: 429).
@Suite(.serialized) struct RedisTopologyTests {
    static func config(store: String) -> String {
        """
        listeners:
          - name: test
            address: 127.0.0.1:@PORT@
        redis:
          shared:
        \(store.split(separator: "\n").map { "    " + $0 }.joined(separator: "\n"))
            command_timeout: 100ms
            circuit: { failures: 3, open: 100ms, max_open: 200ms }
        upstreams:
          echo:
            targets: [ "@ECHO@" ]
        routes:
          - name: all
            match: { path_prefix: / }
            upstream: echo
            policy: limit.lua
            rate_limit_failure: closed
        """
    }

    /// Capacity 500 at 100 a second, loaded at 400 a second for 9 s: the bucket is empty when
    /// the primary dies (at 2.5 s), and the window's refill (under capacity for a window of up
    /// to 5 s) is spent after it, so exactly capacity + rate x seconds are allowed if no take
    /// is lost or doubled. (Light enough not to disturb the suite's timing tests beside it.)
    static func loadThroughFailover(port: Int, key: String, kill: @escaping @Sendable () -> Void) async throws -> PacedLoad {
        let headers = RateLimitTests.headers(key: key, store: "shared", capacity: 500, rate: 100)
        let load = PacedLoad(ports: [port], clients: 4, perClientRate: 100, seconds: 9, headers: headers)
        try await Task.sleep(for: .milliseconds(2500))
        try await onItsOwnThread { kill() }
        try await load.wait()
        return load
    }

    @Test func aBucketOnAClusterStaysExactThroughAPrimaryFailover() async throws {
        let cluster = try await onItsOwnThread { try RedisClusterProcesses() }
        let seed = cluster.nodes[0].port
        try await withGateway(Self.config(store: "cluster: [127.0.0.1:\(seed)]"), workers: 2, scripts: ["limit.lua": RateLimitTests.limit]) { gw in
            // Keys on every primary, reached from one seed: the slot map (and MOVED) at work.
            let client = try gw.client()
            var slots: Set<Int> = []
            for i in 0..<30 {
                let key = "spread-\(i)"
                #expect(try client.request("GET", "/x", headers: RateLimitTests.headers(key: key, store: "shared", capacity: 5, rate: 1)).status == 200)
                slots.insert(RedisSlot.of(Array(key.utf8)))
            }
            var owners: Set<Int> = []
            for slot in slots { owners.insert(try cluster.primary(for: slot).port) }
            #expect(owners.count == 3, "keys reached \(owners.count) primaries")
            for slot in slots {
                let node = try cluster.primary(for: slot)
                let count = try node.connection().send(RedisCommand("CLUSTER", "COUNTKEYSINSLOT", "\(slot)")).int ?? 0
                #expect(count >= 1, "slot \(slot) has no bucket on its primary \(node.port)")
            }

            let key = "failover-cluster"
            let victim = try cluster.primary(for: RedisSlot.of(Array(key.utf8)))
            let load = try await Self.loadThroughFailover(port: gw.port, key: key) { victim.kill() }
            let successor = try cluster.primary(for: RedisSlot.of(Array(key.utf8)), excluding: [victim.port])
            #expect(successor.port != victim.port)
            try RateLimitTests.expectAccurate(load, capacity: 500, rate: 100)
        }
    }

    /// A slot being migrated: the old owner answers ASK for a key it does not hold, and the
    /// bucket is made on the importing node (ASKING, then the command).
    @Test func askRedirectsFollowASlotBeingMigrated() async throws {
        let cluster = try await onItsOwnThread { try RedisClusterProcesses(primaries: 3, replicas: 0) }
        let key = "migrating"
        let slot = RedisSlot.of(Array(key.utf8))
        let source = try cluster.primary(for: slot)
        let target = cluster.nodes.first { $0.port != source.port }!
        func id(_ node: RedisNode) throws -> String {
            guard case .string(let b) = try node.connection().send(RedisCommand("CLUSTER", "MYID")) else { return "" }
            return String(decoding: b, as: UTF8.self)
        }
        _ = try target.connection().send(RedisCommand("CLUSTER", "SETSLOT", "\(slot)", "IMPORTING", try id(source)))
        _ = try source.connection().send(RedisCommand("CLUSTER", "SETSLOT", "\(slot)", "MIGRATING", try id(target)))
        try await withGateway(Self.config(store: "cluster: [127.0.0.1:\(source.port)]"), workers: 1, scripts: ["limit.lua": RateLimitTests.limit]) { gw in
            let client = try gw.client()
            let h = RateLimitTests.headers(key: key, store: "shared", capacity: 2, rate: 0.1)
            #expect(try client.request("GET", "/x", headers: h).status == 200)
            #expect(try client.request("GET", "/x", headers: h).status == 200)
            #expect(try client.request("GET", "/x", headers: h).status == 429)
            #expect(try target.connection().send(RedisCommand("CLUSTER", "COUNTKEYSINSLOT", "\(slot)")).int == 1)
            #expect(try source.connection().send(RedisCommand("CLUSTER", "COUNTKEYSINSLOT", "\(slot)")).int == 0)
        }
    }

    @Test func aBucketBehindSentinelStaysExactThroughAFailover() async throws {
        let group = try await onItsOwnThread { try RedisSentinelProcesses() }
        let sentinels = group.sentinels.map { "127.0.0.1:\($0.port)" }.joined(separator: ", ")
        let store = "sentinel: { addresses: [\(sentinels)], master: \(RedisSentinelProcesses.master) }"
        try await withGateway(Self.config(store: store), workers: 2, scripts: ["limit.lua": RateLimitTests.limit]) { gw in
            let client = try gw.client()
            #expect(try client.request("GET", "/x", headers: RateLimitTests.headers(key: "first", store: "shared", capacity: 5, rate: 1)).status == 200)
            #expect(try group.primary.connection().send(RedisCommand("DBSIZE")).int == 1)

            let load = try await Self.loadThroughFailover(port: gw.port, key: "failover-sentinel") { group.primary.kill() }
            #expect(group.namedPrimaryPort() == group.replica.port, "the sentinels did not promote the replica")
            try RateLimitTests.expectAccurate(load, capacity: 500, rate: 100)
            // The new primary holds the bucket.
            #expect((try group.replica.connection().send(RedisCommand("DBSIZE")).int ?? 0) >= 1)
        }
    }

    @Test func tlsAndAnACLUser() async throws {
        let dir = FileManager.default.temporaryDirectory.appendingPathComponent("moongate-redis-tls-\(UUID().uuidString)")
        try FileManager.default.createDirectory(at: dir, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(at: dir) }
        @Sendable func openssl(_ args: String) throws {
            let p = Process()
            p.executableURL = URL(fileURLWithPath: "/bin/sh")
            p.arguments = ["-c", "cd '\(dir.path)' && openssl \(args) 2>/dev/null"]
            try p.run()
            p.waitUntilExit()
            guard p.terminationStatus == 0 else { throw RedisError.unavailable("openssl \(args) failed") }
        }
        try await onItsOwnThread {
            for name in ["ca", "other-ca"] {
                try openssl("req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -keyout \(name).key -out \(name).pem -days 2 -subj /CN=\(name)")
            }
            try openssl("req -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -keyout redis.key -out redis.csr -subj /CN=redis")
            try "subjectAltName=IP:127.0.0.1\n".write(to: dir.appendingPathComponent("ext"), atomically: true, encoding: .utf8)
            try openssl("x509 -req -in redis.csr -CA ca.pem -CAkey ca.key -CAcreateserial -out redis.pem -days 2 -extfile ext")
        }
        let tlsPort = try freeLoopbackPort()
        let plainPort = try freeLoopbackPort()
        let redis = try await onItsOwnThread {
            try RedisNode(
                [
                    "tls-port \(tlsPort)", "tls-cert-file \(dir.path)/redis.pem", "tls-key-file \(dir.path)/redis.key",
                    "tls-ca-cert-file \(dir.path)/ca.pem", "tls-auth-clients no",
                    "user gateway on >gw-secret ~moongate:* +@all", "user default on nopass ~* +@all",
                ], port: plainPort)
        }
        func store(ca: String) -> String {
            "address: 127.0.0.1:\(tlsPort)\ntls: { ca_file: \(dir.path)/\(ca) }\nusername: gateway\npassword: gw-secret"
        }
        try await withGateway(Self.config(store: store(ca: "ca.pem")), workers: 1, scripts: ["limit.lua": RateLimitTests.limit]) { gw in
            let client = try gw.client()
            let h = RateLimitTests.headers(key: "tls", store: "shared", capacity: 2, rate: 0.1)
            #expect(try client.request("GET", "/x", headers: h).status == 200)
            #expect(try client.request("GET", "/x", headers: h).status == 200)
            let refused = try client.request("GET", "/x", headers: h)
            #expect(refused.status == 429 && !String(decoding: refused.body, as: UTF8.self).contains("unavailable"))
            // The bucket is in Redis, under the ACL user's key pattern (read over the plain port).
            guard case .array(let keys) = try redis.connection().send(RedisCommand("KEYS", "moongate:*")) else { return }
            #expect(keys.count == 1)
        }
        // A certificate from another CA is refused: Redis is unavailable, the failure mode answers.
        try await withGateway(Self.config(store: store(ca: "other-ca.pem")), workers: 1, scripts: ["limit.lua": RateLimitTests.limit]) { gw in
            let answer = try gw.client().request("GET", "/x", headers: RateLimitTests.headers(key: "tls2", store: "shared", capacity: 2, rate: 0.1))
            #expect(answer.status == 429 && String(decoding: answer.body, as: UTF8.self).contains("unavailable"))
        }
    }
}
