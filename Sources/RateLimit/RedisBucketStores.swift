import Config
import FoundationEssentials
import NIOConcurrencyHelpers
import Logging
import NIOCore
import Redis
import Scripting
import SocketLoop

/// Where `redis_bucket` keeps buckets of the Redis stores: the gateway's network clients, or
/// the test harness's stand-ins.
public protocol RedisBucketStore: Sendable {
    /// Takes from `key`'s bucket on server `server` (an index into the config's `redis`).
    /// `completion` runs on the calling event loop, possibly before `take` returns.
    func take(
        server: Int, key: UnsafeRawBufferPointer, capacity: Double, rate: Double, cost: Double,
        completion: @escaping (Result<BucketDecision, RedisError>) -> Void)
}

/// The gateway's Redis stores: one `RedisEndpoint` per configured deployment per event loop
/// (a server's connection, a cluster's node connections, a sentinel-named primary's), so a
/// request talks only to its own loop's connections.
public final class RedisBuckets: RedisBucketStore, RedisSender, @unchecked Sendable {
    public let servers: [RedisServer]
    /// Per server, per event loop. Immutable after `make`; each client is touched only on its loop.
    private let clients: [[(loop: EventLoop, client: NIOLoopBound<any RedisEndpoint>)]]

    private init(servers: [RedisServer], clients: [[(loop: EventLoop, client: NIOLoopBound<any RedisEndpoint>)]]) {
        self.servers = servers
        self.clients = clients
    }

    /// Clients for `servers` on every loop of `group` (they connect on first use).
    public static func make(servers: [RedisServer], group: EventLoopGroup, logger: Logger) async throws -> RedisBuckets {
        var all: [[(loop: EventLoop, client: NIOLoopBound<any RedisEndpoint>)]] = []
        for server in servers {
            let password = try server.passwordFile.map { file in
                String(try FileReading.text(file).trimmingWhitespace())
            } ?? server.password
            let tls = try RedisTLS.load(server.tls)
            var perLoop: [(loop: EventLoop, client: NIOLoopBound<any RedisEndpoint>)] = []
            for loop in group.makeIterator() {
                let client = try await loop.submit {
                    NIOLoopBound(
                        RedisEndpoints.make(server: server, password: password, tls: tls, eventLoop: loop, logger: logger) as any RedisEndpoint,
                        eventLoop: loop)
                }.get()
                perLoop.append((loop, client))
            }
            all.append(perLoop)
        }
        return RedisBuckets(servers: servers, clients: all)
    }

    /// Whether `servers` would be served by the same clients (a reload that keeps them keeps
    /// their connections).
    public func serves(_ servers: [RedisServer]) -> Bool { self.servers == servers }

    public func take(
        server: Int, key: UnsafeRawBufferPointer, capacity: Double, rate: Double, cost: Double,
        completion: @escaping (Result<BucketDecision, RedisError>) -> Void
    ) {
        guard let client = client(server) else {
            completion(.failure(.unavailable("not on a gateway event loop")))
            return
        }
        let prefix = servers[server].keyPrefix
        let command = RedisBucketScript.command(
            eval: false, key: key, prefix: prefix, capacity: capacity, rate: rate, cost: cost, nowMicros: nil)
        client.send(command) { result in
            switch result {
            case .success(let reply) where RedisBucketScript.isNoScript(reply):
                // Redis lost its script cache (restart, SCRIPT FLUSH, failover): send the
                // source once; EVAL caches it again for the next EVALSHA.
                var eval = command
                eval.replaceFirst(with: "EVAL", RedisBucketScript.source)
                client.send(eval) { completion(Self.decide($0)) }
            default:
                completion(Self.decide(result))
            }
        }
    }

    public func send(server: Int, _ command: RedisCommand, completion: @escaping (Result<RedisReply, RedisError>) -> Void) {
        guard let client = client(server) else {
            completion(.failure(.unavailable("not on a gateway event loop")))
            return
        }
        client.send(command, completion: completion)
    }

    static func decide(_ result: Result<RedisReply, RedisError>) -> Result<BucketDecision, RedisError> {
        switch result {
        case .success(let reply):
            if let d = RedisBucketScript.decision(reply) { return .success(d) }
            if case .error(let message) = reply { return .failure(.protocolError(message)) }
            return .failure(.protocolError("unexpected reply \(reply)"))
        case .failure(let error):
            return .failure(error)
        }
    }

    @inline(__always)
    private func client(_ server: Int) -> (any RedisEndpoint)? {
        guard let loop = SocketLoop.currentEventLoop else { return nil }
        for entry in clients[server] where entry.loop === loop { return entry.client.value }
        return nil
    }

    /// Closes every connection (after a reload that dropped or changed these servers).
    public func close() async {
        for perLoop in clients {
            for entry in perLoop {
                let client = entry.client
                try? await entry.loop.submit { client.value.close() }.get()
            }
        }
    }

    /// Summed client counters per server name.
    public func stats() async -> [String: RedisClient.Stats] {
        var out: [String: RedisClient.Stats] = [:]
        for (i, perLoop) in clients.enumerated() {
            var sum = RedisClient.Stats()
            for entry in perLoop {
                let client = entry.client
                if let s = try? await entry.loop.submit({ client.value.stats }).get() { sum.add(s) }
            }
            out[servers[i].name] = sum
        }
        return out
    }
}

/// The harness's Redis stand-in: each server's buckets in memory, on the harness's clock,
/// with the local store's arithmetic (which the Redis script shares).
public final class MemoryRedisBuckets: RedisBucketStore, @unchecked Sendable {
    private let stores: [LocalBuckets]

    public init(servers: Int, clock: any ScriptClock) {
        stores = (0..<servers).map { _ in LocalBuckets(slots: 4096, clock: clock) }
    }

    public func take(
        server: Int, key: UnsafeRawBufferPointer, capacity: Double, rate: Double, cost: Double,
        completion: @escaping (Result<BucketDecision, RedisError>) -> Void
    ) {
        completion(.success(stores[server].take(key, capacity: capacity, rate: rate, cost: cost)))
    }

    public func clear() { for s in stores { s.clear() } }
}

/// The harness's switch to a real `redis-server` (`moongate test --redis host:port`): the
/// same script, run with a blocking connection, on the harness's fake clock (passed as the
/// script's `now`), with keys under a prefix of their own per run.
public final class BlockingRedisBuckets: RedisBucketStore, @unchecked Sendable {
    private let connection: BlockingRedis
    private let clock: any ScriptClock
    private let lock = NIOLock()
    private var prefix: String

    public init(host: String, port: Int, clock: any ScriptClock) throws(RedisError) {
        connection = try BlockingRedis(host: host, port: port)
        self.clock = clock
        prefix = Self.freshPrefix()
    }

    private static func freshPrefix() -> String { "moongate:test:\(UInt64.random(in: 0...UInt64.max)):" }

    /// Starts from empty buckets (new keys; the old ones expire by themselves).
    public func clear() { lock.withLock { prefix = Self.freshPrefix() } }

    public func take(
        server: Int, key: UnsafeRawBufferPointer, capacity: Double, rate: Double, cost: Double,
        completion: @escaping (Result<BucketDecision, RedisError>) -> Void
    ) {
        let micros = clock.nanoseconds() / 1000
        let result: Result<BucketDecision, RedisError> = lock.withLock {
            let prefix = "\(self.prefix)\(server):"
            do {
                var reply = try connection.send(
                    RedisBucketScript.command(eval: false, key: key, prefix: prefix, capacity: capacity, rate: rate, cost: cost, nowMicros: micros))
                if RedisBucketScript.isNoScript(reply) {
                    reply = try connection.send(
                        RedisBucketScript.command(eval: true, key: key, prefix: prefix, capacity: capacity, rate: rate, cost: cost, nowMicros: micros))
                }
                return RedisBuckets.decide(.success(reply))
            } catch let error as RedisError {
                return .failure(error)
            } catch {
                return .failure(.unavailable("\(error)"))
            }
        }
        completion(result)
    }
}
