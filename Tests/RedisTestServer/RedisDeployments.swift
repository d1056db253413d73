import Foundation
import Redis
import TestSupport

/// A `redis-server` started from config lines in a folder of its own (cluster nodes and
/// sentinels write their state files there), on a free loopback port, killable.
public final class RedisNode: @unchecked Sendable {
    public let port: Int
    public let directory: URL
    private let lines: [String]
    private let sentinel: Bool
    private let lock = NSLock()
    private var process: Process?

    public init(_ lines: [String], sentinel: Bool = false, port: Int? = nil) throws {
        self.port = try port ?? freeLoopbackPort()
        self.lines = lines
        self.sentinel = sentinel
        directory = FileManager.default.temporaryDirectory.appendingPathComponent("moongate-redis-\(UUID().uuidString)")
        try FileManager.default.createDirectory(at: directory, withIntermediateDirectories: true)
        try start()
    }

    deinit {
        kill()
        try? FileManager.default.removeItem(at: directory)
    }

    public func start() throws {
        guard let executable = RedisProcess.executable else { throw RedisError.unavailable("redis-server is not installed (scripts/setup installs it)") }
        let config = directory.appendingPathComponent("redis.conf")
        let base = ["bind 127.0.0.1", "port \(port)", "dir \(directory.path)", "loglevel warning", "logfile \(directory.path)/log"]
        // A replica syncs at once (Redis 7 waits 5 s for more replicas before a diskless sync).
        let extra = sentinel ? [] : ["save \"\"", "appendonly no", "repl-diskless-sync-delay 0"]
        try (base + extra + lines).joined(separator: "\n").appending("\n").write(to: config, atomically: true, encoding: .utf8)
        let p = Process()
        p.executableURL = URL(fileURLWithPath: executable)
        p.arguments = sentinel ? [config.path, "--sentinel"] : [config.path]
        p.standardOutput = FileHandle.nullDevice
        p.standardError = FileHandle.nullDevice
        try p.run()
        lock.withLock { process = p }
        let deadline = Date().addingTimeInterval(10)
        while Date() < deadline {
            if let c = try? BlockingRedis(host: "127.0.0.1", port: port, timeoutSeconds: 0.2), (try? c.send(RedisCommand("PING"))) != nil { return }
            usleep(20_000)
        }
        throw RedisError.unavailable("redis-server did not start on port \(port): \((try? String(contentsOf: directory.appendingPathComponent("log"), encoding: .utf8)) ?? "")")
    }

    /// SIGKILL, then waits until the port refuses connections.
    public func kill() {
        guard let p = lock.withLock({ let p = process; process = nil; return p }) else { return }
        Foundation.kill(p.processIdentifier, SIGKILL)
        let deadline = Date().addingTimeInterval(5)
        while Date() < deadline, (try? BlockingRedis(host: "127.0.0.1", port: port, timeoutSeconds: 0.2)) != nil { usleep(10_000) }
    }

    public func connection() throws -> BlockingRedis { try BlockingRedis(host: "127.0.0.1", port: port) }
}

/// A real Redis Cluster on loopback: `primaries` primaries with `replicas` replicas each,
/// made by `redis-cli --cluster create`, a node timeout of 1 s so a killed primary's replica
/// takes over within a few seconds.
public final class RedisClusterProcesses: @unchecked Sendable {
    public let nodes: [RedisNode]

    public init(primaries: Int = 3, replicas: Int = 1) throws {
        nodes = try (0..<(primaries * (1 + replicas))).map { _ in
            try RedisNode(["cluster-enabled yes", "cluster-config-file nodes.conf", "cluster-node-timeout 1000"], port: Self.portWithFreeBus())
        }
        let cli = Process()
        cli.executableURL = URL(fileURLWithPath: "/usr/bin/redis-cli")
        cli.arguments = ["--cluster", "create"] + nodes.map { "127.0.0.1:\($0.port)" } + ["--cluster-replicas", "\(replicas)", "--cluster-yes"]
        cli.standardOutput = FileHandle.nullDevice
        cli.standardError = FileHandle.nullDevice
        try cli.run()
        cli.waitUntilExit()
        guard cli.terminationStatus == 0 else { throw RedisError.unavailable("redis-cli --cluster create failed (\(cli.terminationStatus))") }
        try waitUntilHealthy()
    }

    /// A free port below 55,536 whose cluster bus port (10,000 above) is free too.
    static func portWithFreeBus() throws -> Int {
        func free(_ port: Int) -> Bool {
            let fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
            defer { close(fd) }
            var addr = sockaddr_in()
            addr.sin_family = sa_family_t(AF_INET)
            addr.sin_addr.s_addr = inet_addr("127.0.0.1")
            addr.sin_port = in_port_t(UInt16(port).bigEndian)
            return withUnsafePointer(to: &addr) {
                $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { bind(fd, $0, socklen_t(MemoryLayout<sockaddr_in>.size)) == 0 }
            }
        }
        for _ in 0..<1000 {
            let port = Int.random(in: 20000..<30000)
            if free(port), free(port + 10000) { return port }
        }
        throw NoFreePort()
    }

    /// Until every live node says `cluster_state:ok` and every replica's link to its primary is up
    /// (a replica that never synced refuses to take over).
    public func waitUntilHealthy(timeout: TimeInterval = 30) throws {
        let deadline = Date().addingTimeInterval(timeout)
        while Date() < deadline {
            let ok = nodes.allSatisfy { node in
                guard let c = try? node.connection(), case .string(let info)? = try? c.send(RedisCommand("CLUSTER", "INFO")),
                    case .string(let replication)? = try? c.send(RedisCommand("INFO", "replication"))
                else { return false }
                let r = String(decoding: replication, as: UTF8.self)
                return String(decoding: info, as: UTF8.self).contains("cluster_state:ok") && (r.contains("role:master") || r.contains("master_link_status:up"))
            }
            if ok { return }
            usleep(100_000)
        }
        throw RedisError.unavailable("the cluster did not become healthy")
    }

    /// The node that serves `slot` now, per the first node that answers.
    public func primary(for slot: Int, excluding: Set<Int> = []) throws -> RedisNode {
        for node in nodes where !excluding.contains(node.port) {
            guard let c = try? node.connection(), case .array(let ranges)? = try? c.send(RedisCommand("CLUSTER", "SLOTS")) else { continue }
            for case .array(let f) in ranges {
                guard let start = f[0].int, let end = f[1].int, start <= slot, slot <= end, case .array(let p) = f[2], let port = p[1].int else { continue }
                if let n = nodes.first(where: { $0.port == Int(port) }) { return n }
            }
        }
        throw RedisError.unavailable("no node serves slot \(slot)")
    }
}

/// A primary, a replica, and three sentinels watching them as `master` (quorum 2, the
/// primary down after 1 s).
public final class RedisSentinelProcesses: @unchecked Sendable {
    public let primary: RedisNode
    public let replica: RedisNode
    public let sentinels: [RedisNode]
    public static let master = "moongate-test"

    public init() throws {
        let primary = try RedisNode([])
        self.primary = primary
        replica = try RedisNode(["replicaof 127.0.0.1 \(primary.port)"])
        sentinels = try (0..<3).map { _ in
            try RedisNode(
                [
                    "sentinel monitor \(Self.master) 127.0.0.1 \(primary.port) 2",
                    "sentinel down-after-milliseconds \(Self.master) 1000",
                    "sentinel failover-timeout \(Self.master) 10000",
                ], sentinel: true)
        }
        // The replica in sync and known to the sentinels before a test kills anything.
        let deadline = Date().addingTimeInterval(20)
        while Date() < deadline {
            if let c = try? sentinels[0].connection(),
                case .array(let replicas)? = try? c.send(RedisCommand("SENTINEL", "REPLICAS", Self.master)), !replicas.isEmpty,
                let r = try? replica.connection(), case .string(let info)? = try? r.send(RedisCommand("INFO", "replication")),
                String(decoding: info, as: UTF8.self).contains("master_link_status:up")
            {
                return
            }
            usleep(100_000)
        }
        throw RedisError.unavailable("the sentinels did not see the replica")
    }

    /// The port the first sentinel names as the primary.
    public func namedPrimaryPort() -> Int? {
        for s in sentinels {
            if let c = try? s.connection(), case .array(let f)? = try? c.send(RedisCommand("SENTINEL", "get-master-addr-by-name", Self.master)),
                f.count == 2, let port = f[1].int
            {
                return Int(port)
            }
        }
        return nil
    }
}
