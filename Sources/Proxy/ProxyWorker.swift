import Config
import Logging
import Telemetry
import NIOCore
import Scripting
import SocketLoop

/// Everything one event loop owns: the generation it serves, its upstream pools, its client
/// connections and its request-id sequence. Touched only on its loop, so nothing here locks.
public final class ProxyWorker {
    public let eventLoop: EventLoop
    /// The same loop when it is the gateway's own (its cheaper loop-thread timers), else nil.
    let socketLoop: SocketLoop?
    /// Where the data plane reads the time: the system's clock, or the simulation's, which
    /// moves only when a test advances it (timeouts, breakers and ejections follow it).
    let clock: WorkerClock
    let logger: Logger
    private(set) var generation: WorkerGeneration
    private var pools: [TargetKey: TargetPool] = [:]
    /// Targets the active health checks last found down (`host:port`), kept for pools made later.
    private var probedDown: Set<String> = []
    private var connections: [ObjectIdentifier: DownstreamConnectionHandler] = [:]
    /// Client connections that became HTTP/2 (their streams' handlers are not in `connections`).
    private var h2Connections: [ObjectIdentifier: H2Connection] = [:]
    /// TLS handshakes in progress on this loop (bounded by each listener's `max_handshakes`).
    var handshakesInProgress = 0
    var requestIDs: RequestIDGenerator
    /// This loop's metric values; the admin endpoint sums every loop's.
    public let metrics = MetricStore()
    /// This loop's access-log lines, written out in batches.
    let accessLog = AccessLog()

    /// Access-log lines this loop dropped because the destination could not keep up.
    public var accessLogDropped: Int { accessLog.dropped }
    /// This loop's finished spans, exported in batches when tracing is on.
    let spans = SpanRecorder()
    /// Spans this loop sent to the collector, and dropped (buffer full or export failed).
    public var spansExported: Int { spans.exported }
    public var spansDropped: Int { spans.dropped }
    private var flushTicks = 0
    private var logFlush: RepeatedTask?
    /// Set once shutdown starts: connections close after their current response.
    private(set) var draining = false
    /// Makes upstream connections in the simulation; nil in the gateway.
    let connector: UpstreamConnector?

    init(eventLoop: EventLoop, generation: ProxyGeneration, logger: Logger, connector: UpstreamConnector?) {
        self.connector = connector
        self.eventLoop = eventLoop
        self.socketLoop = eventLoop as? SocketLoop
        self.clock = (eventLoop as? ManualLoop).map { .manual($0) } ?? .system
        self.logger = logger
        self.requestIDs = RequestIDGenerator()
        self.generation = WorkerGeneration(shared: generation)
        vacantExchange = Exchange(worker: self, vacant: true)
        accessLog.use(generation.config.accessLog.destination)
        // The simulation keeps its log lines as they are written and exports no spans: no
        // flush to run (a test that advances its clock by an hour would run 36,000 of them).
        if clock.isManual { return }
        // Weak: the task lives as long as the worker, which owns it.
        let this = NIOLoopBound(WeakWorker(self), eventLoop: eventLoop)
        logFlush = eventLoop.scheduleRepeatedTask(initialDelay: .milliseconds(100), delay: .milliseconds(100)) { _ in
            this.value.worker?.tick()
        }
    }

    /// Every 100 ms: access-log lines out; every second, spans.
    private func tick() {
        accessLog.flush()
        flushTicks += 1
        if flushTicks >= 10 {
            flushTicks = 0
            exportSpans()
        }
    }

    func exportSpans() {
        let logger = self.logger
        // The simulation `moongate test` runs has no sockets: its spans go nowhere.
        let to = connector == nil ? generation.shared.traceExport : nil
        spans.export(to, on: eventLoop) { message in logger.warning("\(message)") }
    }

    public convenience init(eventLoop: EventLoop, generation: ProxyGeneration, logger: Logger) {
        self.init(eventLoop: eventLoop, generation: generation, logger: logger, connector: nil)
    }

    /// Serves `next` for new requests; requests in flight keep the one they started with.
    /// Pools for targets that stay keep their connections; pools for targets that left close.
    public func install(_ next: ProxyGeneration) {
        eventLoop.assertInEventLoop()
        generation = WorkerGeneration(shared: next)
        accessLog.use(next.config.accessLog.destination)
        let live = Set(next.upstreams.flatMap { $0.targets.map(\.key) })
        for (key, pool) in pools where !live.contains(key) {
            pool.closeIdle()
            pools[key] = nil
        }
        dynamicPools = 0
    }

    /// This loop's balancer for `upstream`, over the pools of its targets (kept ones updated).
    func makeBalancer(_ upstream: CompiledUpstream) -> UpstreamBalancer {
        UpstreamBalancer(
            upstream: upstream,
            targets: upstream.targets.map { target in
                let pool: TargetPool
                let tls = upstream.tls.map { UpstreamTLSClient(context: $0.context, settings: $0.settings, host: target.key.host) }
                if let existing = pools[target.key] {
                    existing.update(address: target.address, settings: upstream.settings, tls: tls)
                    pool = existing
                } else {
                    pool = TargetPool(
                        key: target.key, address: target.address, settings: upstream.settings, eventLoop: eventLoop, clock: clock, connector: connector,
                        tls: tls, logger: logger)
                    pool.probedDown = probedDown.contains("\(target.key.host):\(target.key.port)")
                    pools[target.key] = pool
                }
                return (pool, target)
            })
    }

    /// Pools for targets scripts name (`upstream.target`) at most, per worker.
    static let maxDynamicPools = 256
    private var dynamicPools = 0

    /// The pool for a target a script named, made on first use (nil past `maxDynamicPools`).
    /// Connections speak TLS as `upstream`'s targets do.
    func dynamicPool(_ named: TargetKey, _ address: SocketAddress, upstream: CompiledUpstream) -> TargetPool? {
        let key = TargetKey(host: named.host, port: named.port, tls: upstream.tlsIdentity, h2: upstream.settings.h2)
        if let pool = pools[key] { return pool }
        guard dynamicPools < Self.maxDynamicPools else { return nil }
        dynamicPools += 1
        let tls = upstream.tls.map { UpstreamTLSClient(context: $0.context, settings: $0.settings, host: key.host) }
        let pool = TargetPool(
            key: key, address: address, settings: upstream.settings, eventLoop: eventLoop, clock: clock, connector: connector, tls: tls, logger: logger)
        pools[key] = pool
        return pool
    }

    func register(_ connection: DownstreamConnectionHandler) {
        connections[ObjectIdentifier(connection)] = connection
    }

    func unregister(_ connection: DownstreamConnectionHandler) {
        connections[ObjectIdentifier(connection)] = nil
    }

    func registerH2(_ connection: H2Connection) {
        h2Connections[ObjectIdentifier(connection)] = connection
        if draining { connection.drain() }
    }

    func unregisterH2(_ connection: H2Connection) {
        h2Connections[ObjectIdentifier(connection)] = nil
    }

    /// Lua states this loop holds for the current generation, and the heap bytes of the idle ones.
    public var luaStats: LuaPoolStats { generation.luaStats }

    /// What the control plane's active health check found of `target` (`host:port`).
    public func setProbed(_ target: String, healthy: Bool) {
        eventLoop.assertInEventLoop()
        if healthy { probedDown.remove(target) } else { probedDown.insert(target) }
        for pool in pools.values where "\(pool.key.host):\(pool.key.port)" == target { pool.probedDown = !healthy }
    }

    /// This loop's view of each target: `host:port` → ejected by passive health, its circuit
    /// breaker's state (`closed`, `open`, `half_open`), requests in flight.
    public var targetHealth: [String: (ejected: Bool, breaker: String, inFlight: Int)] {
        Dictionary(
            uniqueKeysWithValues: pools.values.map {
                ("\($0.key.host):\($0.key.port)", ($0.health.isEjected(clock.now()), $0.breaker.state.rawValue, $0.health.inFlight))
            })
    }

    /// Upstream connections per target (`host:port`): in use (or connecting) and idle.
    public var poolConnections: [String: (inUse: Int, idle: Int)] {
        var out: [String: (inUse: Int, idle: Int)] = [:]
        for pool in pools.values {
            out["\(pool.key.host):\(pool.key.port)"] = (pool.openConnections - pool.idleCount, pool.idleCount)
        }
        return out
    }

    /// Counts a try's (or call's) outcome in its target's breaker, and says when the breaker opens or closes.
    func breakerRecord(_ pool: TargetPool, success: Bool) {
        guard let changed = pool.breaker.record(success: success, clock.now(), pool.settings.breaker) else { return }
        let target = "\(pool.key.host):\(pool.key.port)"
        if changed == .open {
            logger.warning("circuit breaker open: upstream target skipped", metadata: ["target": "\(target)"])
        } else {
            logger.notice("circuit breaker closed: upstream target back", metadata: ["target": "\(target)"])
        }
    }

    /// Forgets what passive health and the breakers learned about every target (a test's
    /// fresh start under `moongate test`).
    func resetTargetHealth() {
        for pool in pools.values {
            pool.health = TargetHealth()
            pool.breaker = TargetBreaker()
        }
    }

    /// Client connections open on this loop.
    public var connectionCount: Int { connections.count + h2Connections.count }

    /// What connections point at between requests (`Exchange.isVacant`). Set once, at the
    /// end of `init` (it needs the worker); not `lazy`, whose check cost 46 instructions a request.
    private(set) var vacantExchange: Exchange!
    /// Exchanges of requests that ended, ready for the next ones: as many as were ever in
    /// flight at once on this loop, up to `maxSpareExchanges`. A list through the exchanges
    /// themselves: taking and giving back is two stores, where an array's pop and append
    /// checked its buffer's uniqueness each time (callgrind: about 80 instructions a request).
    private var spareHead: Exchange?
    private var spareCount = 0
    static let maxSpareExchanges = 1024

    /// An exchange for a request that starts now.
    @inline(__always)
    func takeExchange() -> Exchange {
        guard let exchange = spareHead else { return Exchange(worker: self) }
        spareHead = exchange.nextSpare
        exchange.nextSpare = nil
        spareCount -= 1
        return exchange
    }

    /// Takes back the exchange of a request that ended (forgotten, its storage kept).
    func giveBack(_ exchange: Exchange) {
        guard !exchange.isVacant else { return }
        exchange.reset()
        guard spareCount < Self.maxSpareExchanges else { return }
        exchange.nextSpare = spareHead
        spareHead = exchange
        spareCount += 1
    }

    /// Requests in progress on this loop (connections holding an exchange) and the spare
    /// exchanges waiting for the next ones, for tests.
    public var exchangeCounts: (inUse: Int, spare: Int) {
        (connections.values.reduce(0) { $0 + ($1.exchange.isVacant ? 0 : 1) } + h2Connections.values.reduce(0) { $0 + $1.exchangesInUse }, spareCount)
    }

    /// Whether this loop may accept another client connection (`limits.max_connections`).
    public var admitsConnection: Bool { connectionCount < generation.shared.config.limits.maxConnections }

    /// Upstream connections open on this loop (idle, in use or connecting), for tests.
    public var upstreamConnectionCount: Int { pools.values.reduce(0) { $0 + $1.openConnections } }

    /// Stops keep-alive: idle connections close now, busy ones after their response.
    public func drain() {
        eventLoop.assertInEventLoop()
        draining = true
        for connection in connections.values { connection.closeWhenIdle() }
        for connection in h2Connections.values { connection.drain() }
    }

    /// Closes the client connections that came through `listener` once idle (a removed listener).
    public func drain(listener: ListenerHandle) {
        for connection in connections.values where connection.listener === listener { connection.closeWhenIdle() }
        for connection in h2Connections.values where connection.listener === listener { connection.drain() }
    }

    /// Closes what is left: called after the drain timeout.
    public func closeAll() {
        logFlush?.cancel()
        accessLog.flush()
        for connection in connections.values { connection.forceClose() }
        for connection in h2Connections.values { connection.forceClose() }
        for pool in pools.values { pool.closeIdle() }
    }
}

@available(*, unavailable)
extension ProxyWorker: Sendable {}

/// A generation as one worker serves it: the shared snapshot plus this loop's balancers.
final class WorkerGeneration {
    let shared: ProxyGeneration
    /// Made on an upstream's first use: installing a configuration of hundreds of upstreams
    /// costs the loop nothing (building them all stalled it 0.9 ms; scripts/bench --fleet).
    private var balancers: [UpstreamBalancer?]
    private var pool: LuaStatePool?

    /// This loop's balancer for upstream `index` (an index of `shared.upstreams`).
    @inline(__always)
    func balancer(_ index: Int, on worker: ProxyWorker) -> UpstreamBalancer {
        if let made = balancers[index] { return made }
        let made = worker.makeBalancer(shared.upstreams[index])
        balancers[index] = made
        return made
    }

    /// This loop's Lua states for the generation's scripts, made on first use.
    func luaPool() -> LuaStatePool? {
        if let pool { return pool }
        guard let program = shared.scripts else { return nil }
        let made = LuaStatePool(program: program)
        pool = made
        return made
    }

    /// This loop's interpreter, request contexts and heap bytes, for figures and tests.
    var luaStats: LuaPoolStats { pool?.stats ?? LuaPoolStats() }

    init(shared: ProxyGeneration) {
        self.shared = shared
        self.balancers = Array(repeating: nil, count: shared.upstreams.count)
    }
}

/// Marks client connections with the listener they came through, so a removed listener's
/// connections can be drained. Identity only; lives as long as the listener's sockets.
public final class ListenerHandle: Sendable {
    public let name: String
    public init(name: String) { self.name = name }
}

/// Request ids: a random 64-bit prefix per worker and a counter, as 32 hex digits. Unique
/// without a syscall or lock per request.
struct RequestIDGenerator {
    private let prefix: UInt64 = .random(in: .min ... .max)
    private var counter: UInt64 = 0

    /// wyrand state: fast, per worker, seeded from the system generator. Trace and span ids
    /// need uniqueness, not secrecy (and `SystemRandomNumberGenerator` is a syscall a call).
    private var state: UInt64 = .random(in: .min ... .max)

    mutating func next64() -> UInt64 {
        state &+= 0xa076_1d64_78bd_642f
        let m = state.multipliedFullWidth(by: state ^ 0xe703_7ed1_a0b4_28db)
        return m.high ^ m.low
    }

    mutating func next(into buffer: inout ByteBuffer) {
        counter &+= 1
        let prefix = self.prefix, counter = self.counter
        // Formatted on the stack and written once: one capacity check instead of 32.
        buffer.writeWithUnsafeMutableBytes(minimumWritableBytes: 32) { out in
            for i in 0..<16 {
                out[i] = Self.hex(prefix >> UInt64(60 - 4 * i))
                out[16 + i] = Self.hex(counter >> UInt64(60 - 4 * i))
            }
            return 32
        }
    }

    @inline(__always)
    private static func hex(_ nibble: UInt64) -> UInt8 {
        let n = UInt8(truncatingIfNeeded: nibble & 0xF)
        return n < 10 ? 48 + n : 87 + n
    }
}

private struct WeakWorker {
    weak var worker: ProxyWorker?
    init(_ worker: ProxyWorker) { self.worker = worker }
}
