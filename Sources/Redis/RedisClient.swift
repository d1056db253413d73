import Config
import Logging
import NIOCore
import NIOPosix
import SocketLoop
import TLS

/// One worker's connection to one Redis server: commands are pipelined on a single
/// connection, answered in order, each with its own deadline. Created and used on one event
/// loop only; nothing in it blocks.
///
/// It connects on first use (sending `AUTH` and `SELECT` ahead of the first commands),
/// reconnects after a loss, and keeps a `Circuit`: while Redis is down or too slow, commands
/// fail at once, and the circuit's growing open time is the reconnect back-off.
public final class RedisClient {
    public typealias Completion = (Result<RedisReply, RedisError>) -> Void

    public let server: RedisServer
    /// The server this connection goes to: `server.address`, or a cluster node, a sentinel, or
    /// the primary a sentinel named.
    public let address: SocketAddressSpec
    private let eventLoop: EventLoop
    private let logger: Logger
    private let username: String?
    private let password: String?
    private let database: Int
    private let tls: RedisTLS?
    private var channel: Channel?
    private var connecting = false
    private var closed = false
    /// Commands written and not yet answered, oldest first.
    private var inFlight = CircularBuffer<Pending>(initialCapacity: 64)
    /// Commands waiting for the connection.
    private var queued = CircularBuffer<(command: ByteBuffer, pending: Pending)>()
    private var circuit: Circuit
    private var timer: Scheduled<Void>?
    private var timerDeadline = NIODeadline.distantFuture
    private let commandTimeout: TimeAmount
    private var flushScheduled = false
    /// Counts since start, for logs and metrics.
    public private(set) var stats = Stats()

    public struct Stats: Sendable {
        public var commands = 0
        public var timeouts = 0
        public var failures = 0
        public var rejected = 0
        public var connects = 0

        public init() {}
    }

    /// Commands that may wait for a connection; more fail with `.overloaded`.
    static let maxQueued = 4096
    private static let allocator = ByteBufferAllocator()
    /// Unanswered commands on one connection past their deadline before it is dropped (Redis
    /// is stuck; a fresh connection starts clean).
    static let maxTimedOut = 256

    private final class Pending {
        var completion: Completion?
        let deadline: NIODeadline
        let probe: Bool
        init(_ completion: @escaping Completion, deadline: NIODeadline, probe: Bool) {
            self.completion = completion
            self.deadline = deadline
            self.probe = probe
        }
    }

    /// A connection to `server.address` with the server's credentials.
    public convenience init(server: RedisServer, password: String?, eventLoop: EventLoop, logger: Logger) {
        self.init(
            server: server, address: server.address, username: server.username, password: password, database: server.database, tls: nil,
            eventLoop: eventLoop, logger: logger)
    }

    /// A connection to `address`, one server of `server`'s deployment, sending `AUTH` (with
    /// `username` when given) and `SELECT database` first.
    public init(
        server: RedisServer, address: SocketAddressSpec, username: String?, password: String?, database: Int, tls: RedisTLS?,
        eventLoop: EventLoop, logger: Logger
    ) {
        self.server = server
        self.address = address
        self.username = username
        self.password = password
        self.database = database
        self.tls = tls
        self.eventLoop = eventLoop
        var logger = logger
        logger[metadataKey: "redis"] = "\(server.name)"
        logger[metadataKey: "address"] = "\(address)"
        self.logger = logger
        self.commandTimeout = TimeAmount(server.commandTimeout)
        self.circuit = Circuit(
            threshold: server.circuitFailures, open: TimeAmount(server.circuitOpen), maxOpen: TimeAmount(server.circuitMaxOpen))
    }

    /// Whether the circuit is open (Redis is being skipped).
    public var circuitOpen: Bool { circuit.isOpen }

    /// Sends `command`; `completion` runs on this loop with the reply or why there is none,
    /// within the command timeout. It may run before `send` returns (circuit open, overloaded).
    public func send(_ command: RedisCommand, completion: @escaping Completion) {
        eventLoop.preconditionInEventLoop()
        stats.commands += 1
        let now = NIODeadline.now()
        let admission = closed ? .reject : circuit.admit(now: now)
        if case .reject = admission {
            stats.rejected += 1
            completion(.failure(.circuitOpen))
            return
        }
        let pending = Pending(completion, deadline: now + commandTimeout, probe: admission == .probe)
        var bytes = Self.allocator.buffer(capacity: 128)
        command.write(into: &bytes)
        if let channel, channel.isActive {
            write(bytes, pending, on: channel)
        } else {
            guard queued.count < Self.maxQueued else {
                stats.rejected += 1
                completion(.failure(.overloaded))
                return
            }
            queued.append((bytes, pending))
            armTimer(pending.deadline)
            connect()
        }
    }

    private func write(_ bytes: ByteBuffer, _ pending: Pending, on channel: Channel) {
        inFlight.append(pending)
        armTimer(pending.deadline)
        channel.write(bytes, promise: nil)
        // One flush per loop tick, however many commands the tick's requests sent.
        if !flushScheduled {
            flushScheduled = true
            eventLoop.assumeIsolatedUnsafeUnchecked().execute { [self] in
                flushScheduled = false
                self.channel?.flush()
            }
        }
    }

    private func connect() {
        guard !connecting, !closed else { return }
        connecting = true
        stats.connects += 1
        let bound = NIOLoopBound(self, eventLoop: eventLoop)
        let loop = eventLoop
        let tls = self.tls
        let address = self.address
        TCPClient.connect(host: address.host, port: address.port, on: loop, timeout: TimeAmount(server.connectTimeout)) {
            if let tls {
                let name = tls.serverName(for: address)
                try $0.pipeline.syncOperations.addHandler(
                    ChannelTLSClientHandler(client: tls.context, serverName: name, address: name == nil ? address.host : nil))
            }
            try $0.pipeline.syncOperations.addHandler(RedisChannelHandler(client: bound.value))
        }
            .hop(to: loop)
            .assumeIsolatedUnsafeUnchecked()
            .whenComplete { [self] result in
                connecting = false
                switch result {
                case .success(let channel):
                    if closed {
                        channel.close(promise: nil)
                        return
                    }
                    connected(channel)
                case .failure(let error):
                    connectFailed(Self.describe(error))
                }
            }
    }

    private func connected(_ channel: Channel) {
        if let old = self.channel {
            // A connection that died before its close was seen: what was written to it will
            // never be answered, and must not be matched with the new connection's replies.
            self.channel = nil
            old.close(promise: nil)
            while let pending = inFlight.popFirst() { finish(pending, .failure(.unavailable("connection lost")), count: false) }
        }
        self.channel = channel
        // Set-up commands go first on the wire; their replies are checked like any other.
        var setup: [RedisCommand] = []
        if let password {
            if let username { setup.append(RedisCommand("AUTH", username, password)) } else { setup.append(RedisCommand("AUTH", password)) }
        }
        if database != 0 { setup.append(RedisCommand("SELECT", String(database))) }
        let deadline = NIODeadline.now() + TimeAmount(server.connectTimeout) + commandTimeout
        for command in setup {
            var bytes = channel.allocator.buffer(capacity: 64)
            command.write(into: &bytes)
            let pending = Pending(
                { [self] result in
                    switch result {
                    case .success(.error(let message)):
                        // Counts towards the circuit, so a wrong password does not mean a
                        // reconnect per request.
                        if circuit.failed(now: .now()) { logCircuitOpened(.protocolError(message)) }
                        logger.error("redis refused the connection set-up", metadata: ["error": "\(message)"])
                        channel.close(promise: nil)
                    default: break
                    }
                }, deadline: deadline, probe: false)
            write(bytes, pending, on: channel)
        }
        while let (bytes, pending) = queued.popFirst() {
            guard pending.completion != nil else { continue }  // timed out while queued
            write(bytes, pending, on: channel)
        }
    }

    /// The cause, without NIO's wrapping of every address tried.
    static func describe(_ error: Error) -> String {
        if let e = error as? NIOConnectionError, let first = e.connectionErrors.first { return "connect to \(first.target): \(first.error)" }
        return "\(error)"
    }

    private func connectFailed(_ why: String) {
        let error = RedisError.unavailable(why)
        let opened = circuit.failed(now: .now())
        // Everything queued fails now: its requests follow their failure mode.
        while let (_, pending) = queued.popFirst() { finish(pending, .failure(error), count: false) }
        if opened { logCircuitOpened(error) }
    }

    // MARK: from the channel handler

    func received(_ reply: RedisReply) {
        guard let pending = inFlight.popFirst() else {
            logger.error("redis sent a reply nobody asked for; reconnecting")
            channel?.close(promise: nil)
            return
        }
        if pending.completion != nil, circuit.succeeded() {
            logger.notice("redis is answering again; circuit closed")
        }
        finish(pending, .success(reply), count: false)
    }

    func protocolFailed(_ error: RedisError) {
        logger.error("redis protocol error; reconnecting", metadata: ["error": "\(error)"])
        channel?.close(promise: nil)
    }

    func channelClosed(_ channel: Channel) {
        guard self.channel === channel else { return }
        self.channel = nil
        let error = RedisError.unavailable("connection closed")
        var lost = false
        while let pending = inFlight.popFirst() {
            if pending.completion != nil { lost = true }
            finish(pending, .failure(error), count: false)
        }
        if lost, circuit.failed(now: .now()) { logCircuitOpened(error) }
        if !queued.isEmpty { connect() }
    }

    // MARK: deadlines

    private func armTimer(_ deadline: NIODeadline) {
        guard deadline < timerDeadline else { return }
        timer?.cancel()
        timerDeadline = deadline
        timer = eventLoop.assumeIsolatedUnsafeUnchecked().scheduleTask(deadline: deadline) { [self] in
            timerDeadline = .distantFuture
            timer = nil
            expire()
        }
    }

    private func expire() {
        let now = NIODeadline.now()
        var next = NIODeadline.distantFuture
        var expired = 0
        var stale = 0
        for pending in inFlight {
            if pending.completion == nil {
                stale += 1
            } else if pending.deadline <= now {
                finish(pending, .failure(.timeout), count: true)
                expired += 1
                stale += 1
            } else if pending.deadline < next {
                next = pending.deadline
            }
        }
        for (_, pending) in queued where pending.completion != nil {
            if pending.deadline <= now {
                finish(pending, .failure(.timeout), count: true)
                expired += 1
            } else if pending.deadline < next {
                next = pending.deadline
            }
        }
        if expired > 0, circuit.failed(now: now) { logCircuitOpened(.timeout) }
        // A connection whose answers stopped coming is dropped; the next command reconnects.
        if stale > Self.maxTimedOut { channel?.close(promise: nil) }
        if next != .distantFuture { armTimer(next) }
    }

    private func finish(_ pending: Pending, _ result: Result<RedisReply, RedisError>, count: Bool) {
        guard let completion = pending.completion else { return }
        pending.completion = nil
        if case .failure = result {
            stats.failures += 1
            if count, case .failure(.timeout) = result { stats.timeouts += 1 }
        }
        completion(result)
    }

    private func logCircuitOpened(_ error: RedisError) {
        logger.error(
            "redis failing; circuit open: rate limits follow each route's failure mode until it answers again",
            metadata: ["error": "\(error)", "failures": "\(circuit.failures)"])
    }

    /// Closes the connection; later commands fail at once.
    public func close() {
        closed = true
        channel?.close(promise: nil)
        while let (_, pending) = queued.popFirst() { finish(pending, .failure(.unavailable("closed")), count: false) }
    }
}

/// TLS to a Redis deployment's servers: the client context loaded with the config, and the
/// settings' name.
public struct RedisTLS: Sendable {
    public let context: TLSClientContext
    public let sni: String?

    public init(context: TLSClientContext, sni: String?) {
        self.context = context
        self.sni = sni
    }

    /// Loads `settings`' CA, client certificate and version.
    public init(_ settings: UpstreamTLS) throws(TLSError) {
        let certificate = settings.cert.flatMap { cert in settings.key.map { TLSCertificates.Source(cert: cert, key: $0) } }
        context = try TLSClientContext(
            caFile: settings.caFile, certificate: certificate, verify: settings.verify, minVersion: settings.minVersion == 13 ? .tls13 : .tls12)
        sni = settings.sni
    }

    /// `settings` loaded, or nil without them; a file that does not load is a config error
    /// at `tls:`.
    public static func load(_ settings: UpstreamTLS?) throws(ConfigError) -> RedisTLS? {
        guard let settings else { return nil }
        do {
            return try RedisTLS(settings)
        } catch {
            throw ConfigError([settings.place.problem(error.description)])
        }
    }

    /// The name sent and verified: `sni`, or the host when it is a name; nil for an IP
    /// address, which is verified as one.
    func serverName(for address: SocketAddressSpec) -> String? {
        if let sni { return sni }
        let host = address.host
        if host.contains(":") || host.allSatisfy({ $0.isNumber || $0 == "." }) { return nil }
        return host
    }
}

/// Feeds the bytes Redis sends to hiredis's reader and hands replies to the client in order.
final class RedisChannelHandler: ChannelInboundHandler {
    typealias InboundIn = ByteBuffer

    private let client: RedisClient
    private let reader = RedisReplyReader()

    init(client: RedisClient) {
        self.client = client
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        let bytes = unwrapInboundIn(data)
        guard reader.feed(bytes) else {
            client.protocolFailed(.protocolError("feed"))
            return
        }
        do {
            while let reply = try reader.next() { client.received(reply) }
        } catch {
            client.protocolFailed(error)
        }
    }

    func channelInactive(context: ChannelHandlerContext) {
        client.channelClosed(context.channel)
    }

    func errorCaught(context: ChannelHandlerContext, error: Error) {
        context.close(promise: nil)
    }
}

extension TimeAmount {
    init(_ duration: Duration) {
        let (seconds, attoseconds) = duration.components
        self = .nanoseconds(seconds * 1_000_000_000 + attoseconds / 1_000_000_000)
    }
}

/// Sends commands to the configured Redis servers on the calling event loop's connection:
/// what API modules other than `redis_bucket` (`kv`) use.
public protocol RedisSender: Sendable {
    /// Sends `command` to server `server` (an index into the config's `redis`); `completion`
    /// runs on the calling event loop, possibly before `send` returns.
    func send(server: Int, _ command: RedisCommand, completion: @escaping (Result<RedisReply, RedisError>) -> Void)
}
