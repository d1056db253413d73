import Config
import Logging
import NIOCore

/// One worker's view of a Redis Cluster: the slot map read with `CLUSTER SLOTS`, a pipelined
/// `RedisClient` per primary it talks to, `MOVED` (the map is fixed and read again) and `ASK`
/// (one command, after `ASKING`) followed. When a node fails or the cluster says it is down,
/// the map is read again from the other nodes (at most every 100 ms), so a failover is
/// followed once the cluster has promoted a replica; commands in between fail as any Redis
/// failure does (the route's failure mode).
public final class RedisClusterClient: RedisEndpoint {
    private let server: RedisServer
    private let seeds: [SocketAddressSpec]
    private let password: String?
    private let tls: RedisTLS?
    private let eventLoop: EventLoop
    private let logger: Logger
    private var map = RedisSlotMap()
    private var nodes: [SocketAddressSpec: RedisClient] = [:]
    /// `nodes`' clients by index in `map.nodes`: a command reaches its connection through the
    /// slot's owner index, without hashing an address on every command.
    private var clientsByIndex: [RedisClient?] = []
    private lazy var refresh = TopologyRefresher(minInterval: .milliseconds(100), eventLoop: eventLoop) { [weak self] in self?.askNodes() }
    /// Which known node to ask first next time, so a dead one is not always first.
    private var askFrom = 0
    private var closed = false
    /// Counts of connections closed since start (nodes that left the map).
    private var retired = RedisClient.Stats()
    /// A command follows at most this many redirects (a map in flux answers with more).
    static let maxRedirects = 5

    init(server: RedisServer, seeds: [SocketAddressSpec], password: String?, tls: RedisTLS?, eventLoop: EventLoop, logger: Logger) {
        self.server = server
        self.seeds = seeds
        self.password = password
        self.tls = tls
        self.eventLoop = eventLoop
        var logger = logger
        logger[metadataKey: "redis"] = "\(server.name)"
        self.logger = logger
    }

    public var stats: RedisClient.Stats {
        var sum = retired
        for client in nodes.values { sum.add(client.stats) }
        return sum
    }

    /// The slot map as this worker knows it (tests, `/status`).
    public var slotMap: RedisSlotMap { map }

    public func send(_ command: RedisCommand, completion: @escaping RedisClient.Completion) {
        eventLoop.preconditionInEventLoop()
        guard !closed else {
            completion(.failure(.unavailable("closed")))
            return
        }
        let slot = command.slot
        if map.isEmpty { refresh.wanted() }
        if let index = map.nodeIndex(for: slot) {
            attempt(command, to: map.nodes[index], via: client(at: index), asking: false, redirects: 0, completion)
        } else {
            let seed = seeds[askFrom % seeds.count]
            attempt(command, to: seed, via: client(for: seed), asking: false, redirects: 0, completion)
        }
    }

    private func attempt(
        _ command: RedisCommand, to node: SocketAddressSpec, via client: RedisClient, asking: Bool, redirects: Int,
        _ completion: @escaping RedisClient.Completion
    ) {
        // ASKING and the command go out back to back on one pipelined connection, as the
        // specification requires; ASKING's own answer (OK) is not waited for.
        if asking { client.send(RedisCommand("ASKING")) { _ in } }
        client.send(command) { [self] result in
            switch result {
            case .success(.error(let message)):
                if let redirect = RedisRedirect(message) {
                    guard redirects < Self.maxRedirects, !closed else {
                        completion(.failure(.unavailable("redirected more than \(Self.maxRedirects) times (last: \(message))")))
                        return
                    }
                    switch redirect {
                    case .moved(let slot, let to):
                        let to = to.host.isEmpty ? SocketAddressSpec(host: node.host, port: to.port) : to
                        map.assign(slot, to: to)
                        refresh.wanted()
                        attempt(command, to: to, via: self.client(for: to), asking: false, redirects: redirects + 1, completion)
                    case .ask(_, let to):
                        let to = to.host.isEmpty ? SocketAddressSpec(host: node.host, port: to.port) : to
                        attempt(command, to: to, via: self.client(for: to), asking: true, redirects: redirects + 1, completion)
                    }
                    return
                }
                // The cluster cannot serve the slot now (a failover in progress, a slot
                // migrating): a failure of Redis, as far as the request is concerned.
                if message.hasPrefix("CLUSTERDOWN") || message.hasPrefix("TRYAGAIN") || message.hasPrefix("READONLY") {
                    refresh.wanted()
                    completion(.failure(.unavailable(message)))
                    return
                }
                completion(result)
            case .failure:
                refresh.wanted()
                completion(result)
            case .success:
                completion(result)
            }
        }
    }

    private func client(at index: Int) -> RedisClient {
        if index < clientsByIndex.count, let client = clientsByIndex[index] { return client }
        let client = client(for: map.nodes[index])
        if index >= clientsByIndex.count { clientsByIndex.append(contentsOf: repeatElement(nil, count: index + 1 - clientsByIndex.count)) }
        clientsByIndex[index] = client
        return client
    }

    private func client(for node: SocketAddressSpec) -> RedisClient {
        if let client = nodes[node] { return client }
        let client = RedisClient(
            server: server, address: node, username: server.username, password: password, database: 0, tls: tls, eventLoop: eventLoop,
            logger: logger)
        nodes[node] = client
        return client
    }

    // MARK: the slot map

    /// Every node known, the seeds too, asked in turn from a different one each time; nodes
    /// whose circuits are open (down, as far as this worker knows) last.
    private func askNodes() {
        var candidates = map.nodes
        for seed in seeds where !candidates.contains(seed) { candidates.append(seed) }
        let start = askFrom % candidates.count
        askFrom += 1
        candidates = Array(candidates[start...] + candidates[..<start])
        candidates.sort { (nodes[$0]?.circuitOpen == true ? 1 : 0) < (nodes[$1]?.circuitOpen == true ? 1 : 0) }
        ask(candidates, 0)
    }

    private func ask(_ candidates: [SocketAddressSpec], _ index: Int) {
        guard !closed else { return }
        guard index < candidates.count else {
            logger.warning("no node of the redis cluster answered CLUSTER SLOTS; trying again on the next failure")
            refresh.answered()
            return
        }
        let node = candidates[index]
        client(for: node).send(RedisCommand("CLUSTER", "SLOTS")) { [self] result in
            guard case .success(let reply) = result, let fresh = RedisSlotMap.parse(reply, asked: node), !fresh.isEmpty else {
                ask(candidates, index + 1)
                return
            }
            adopt(fresh)
            refresh.answered()
        }
    }

    private func adopt(_ fresh: RedisSlotMap) {
        if !map.isEmpty, map != fresh {
            let gone = map.nodes.filter { !fresh.nodes.contains($0) }
            let joined = fresh.nodes.filter { !map.nodes.contains($0) }
            logger.notice(
                "redis cluster slot map changed",
                metadata: ["primaries": "\(fresh.nodes.map(\.description).joined(separator: ","))", "left": "\(gone.map(\.description))", "joined": "\(joined.map(\.description))"])
        }
        map = fresh
        clientsByIndex = []
        // Connections to nodes that serve no slot now (a failed primary, now a replica or
        // gone) are closed; a seed's is kept, to ask it again.
        for (address, client) in nodes where !fresh.nodes.contains(address) && !seeds.contains(address) {
            retired.add(client.stats)
            client.close()
            nodes[address] = nil
        }
    }

    public func close() {
        closed = true
        for client in nodes.values { client.close() }
    }
}
