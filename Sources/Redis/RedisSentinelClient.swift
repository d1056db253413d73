import Config
import Logging
import NIOCore

/// One worker's way to a primary that Redis Sentinel names: it asks the sentinels in turn
/// (`SENTINEL get-master-addr-by-name`), sends commands to the named primary on one
/// pipelined `RedisClient`, and asks again every `recheck` and whenever the primary fails or
/// answers `READONLY` (it was demoted), at most every 100 ms. When a sentinel names another
/// primary, new commands go there and the old connection is closed. Commands sent before any
/// primary is known wait for the first answer, bounded like every command.
public final class RedisSentinelClient: RedisEndpoint {
    private let server: RedisServer
    private let sentinel: RedisSentinel
    private let password: String?
    private let tls: RedisTLS?
    private let eventLoop: EventLoop
    private let logger: Logger
    private var sentinels: [RedisClient] = []
    private var primary: RedisClient?
    private lazy var refresh = TopologyRefresher(minInterval: .milliseconds(100), eventLoop: eventLoop) { [weak self] in self?.ask(0) }
    /// The sentinel asked first next time (the last one that answered).
    private var askFrom = 0
    /// Commands waiting for a primary to be named, with their deadlines.
    private var waiting = CircularBuffer<(command: RedisCommand, completion: RedisClient.Completion, deadline: NIODeadline)>()
    private var recheckTask: Scheduled<Void>?
    private var closed = false
    private var retired = RedisClient.Stats()

    init(server: RedisServer, sentinel: RedisSentinel, password: String?, tls: RedisTLS?, eventLoop: EventLoop, logger: Logger) {
        self.server = server
        self.sentinel = sentinel
        self.password = password
        self.tls = tls
        self.eventLoop = eventLoop
        var logger = logger
        logger[metadataKey: "redis"] = "\(server.name)"
        self.logger = logger
        // A sentinel is asked with the sentinel's own credentials, in database 0; a short
        // circuit so a dead sentinel is skipped quickly.
        var asSentinel = server
        asSentinel.circuitFailures = 1
        sentinels = sentinel.addresses.map { address in
            RedisClient(
                server: asSentinel, address: address, username: sentinel.username, password: sentinel.password, database: 0, tls: tls,
                eventLoop: eventLoop, logger: logger)
        }
        eventLoop.assumeIsolatedUnsafeUnchecked().execute { [self] in
            refresh.wanted()
            scheduleRecheck()
        }
    }

    public var stats: RedisClient.Stats {
        var sum = retired
        if let primary { sum.add(primary.stats) }
        return sum
    }

    /// The primary in use (tests, `/status`).
    public var primaryAddress: SocketAddressSpec? { primary?.address }

    public func send(_ command: RedisCommand, completion: @escaping RedisClient.Completion) {
        eventLoop.preconditionInEventLoop()
        guard !closed else {
            completion(.failure(.unavailable("closed")))
            return
        }
        guard let primary else {
            guard waiting.count < RedisClient.maxQueued else {
                completion(.failure(.overloaded))
                return
            }
            waiting.append((command, completion, .now() + TimeAmount(server.commandTimeout)))
            refresh.wanted()
            return
        }
        send(command, to: primary, completion)
    }

    private func send(_ command: RedisCommand, to primary: RedisClient, _ completion: @escaping RedisClient.Completion) {
        primary.send(command) { [self] result in
            switch result {
            case .failure:
                refresh.wanted()
            case .success(.error(let message)) where message.hasPrefix("READONLY"):
                // Writing to a replica: the primary named earlier was demoted.
                refresh.wanted()
                completion(.failure(.unavailable(message)))
                return
            default:
                break
            }
            completion(result)
        }
    }

    private func scheduleRecheck() {
        recheckTask = eventLoop.assumeIsolatedUnsafeUnchecked().scheduleTask(in: TimeAmount(sentinel.recheck)) { [self] in
            guard !closed else { return }
            refresh.wanted()
            scheduleRecheck()
        }
    }

    private func ask(_ tried: Int) {
        guard !closed else { return }
        guard tried < sentinels.count else {
            logger.warning("no sentinel named a primary", metadata: ["master": "\(sentinel.master)"])
            failWaiting(.unavailable("no sentinel named a primary for \(sentinel.master)"))
            refresh.answered()
            return
        }
        let index = (askFrom + tried) % sentinels.count
        sentinels[index].send(RedisCommand("SENTINEL", "get-master-addr-by-name", sentinel.master)) { [self] result in
            guard case .success(.array(let fields)) = result, fields.count == 2,
                case .string(let host) = fields[0], let port = fields[1].int, port > 0, port < 65536, !host.isEmpty
            else {
                ask(tried + 1)
                return
            }
            askFrom = index
            named(SocketAddressSpec(host: String(decoding: host, as: UTF8.self), port: Int(port)))
            refresh.answered()
        }
    }

    private func named(_ address: SocketAddressSpec) {
        guard !closed else { return }
        if primary?.address != address {
            if let old = primary {
                logger.notice("redis primary changed", metadata: ["from": "\(old.address)", "to": "\(address)", "master": "\(sentinel.master)"])
                retired.add(old.stats)
                old.close()
            }
            primary = RedisClient(
                server: server, address: address, username: server.username, password: password, database: server.database, tls: tls,
                eventLoop: eventLoop, logger: logger)
        }
        guard let primary else { return }
        let now = NIODeadline.now()
        while let entry = waiting.popFirst() {
            if entry.deadline <= now {
                entry.completion(.failure(.timeout))
            } else {
                send(entry.command, to: primary, entry.completion)
            }
        }
    }

    private func failWaiting(_ error: RedisError) {
        while let entry = waiting.popFirst() { entry.completion(.failure(error)) }
    }

    public func close() {
        closed = true
        recheckTask?.cancel()
        primary?.close()
        for s in sentinels { s.close() }
        failWaiting(.unavailable("closed"))
    }
}
