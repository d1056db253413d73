import Config
import Telemetry
import Logging
import NIOCore
import Plugins
import Scripting
import TLS

/// One immutable, validated snapshot of the configuration, compiled for the data plane.
/// Built off the event loops, then handed to every worker; a request keeps the generation it
/// started with until it ends, so a reload never changes a request half-way.
public final class ProxyGeneration: Sendable {
    /// Increases by one per successful load.
    public let id: Int
    public let config: GatewayConfig
    let routes: [CompiledRoute]
    let limits: HeadLimits
    /// `metrics.enabled`: whether requests are counted.
    let metricsEnabled: Bool
    /// Where spans go, when `tracing.endpoint` is set.
    let traceExport: TraceExport?
    /// Per upstream (same indices as the config), its targets with resolved addresses.
    let upstreams: [CompiledUpstream]
    let clientIdleTimeout: TimeAmount
    let requestTimeout: TimeAmount
    /// The policies routes run, loaded and validated; nil when no route has one.
    public let scripts: ScriptProgram?
    /// Heap bytes of one Lua state with every policy loaded (0 without policies).
    public let scriptStateBytes: Int
    /// Router script index by listener name, for listeners that have one.
    let routers: [String: Int]
    /// The certificates of each TLS listener, by listener name: loaded with the generation, so
    /// a reload serves renewed certificates to new connections.
    let tls: [String: TLSCertificates]
    /// Each TLS listener's settings (timeouts, bounds), by listener name.
    let tlsSettings: [String: ListenerTLS]
    /// Listeners whose connections may speak HTTP/2 (ALPN `h2`, or `h2c: true`).
    let http2Listeners: Set<String>
    let routesByName: [String: CompiledRoute]
    let routeIndex: RouteIndex

    /// Compiles `config`. Resolves target host names and reads and validates the scripts
    /// (blocking: call it off the event loops). `modules` are the Lua modules beyond
    /// `request` and `response` that scripts get.
    public init(
        id: Int, config: GatewayConfig, modules: [any LuaModule] = [], clock: any ScriptClock = SystemClock(),
        logger: Logger = Logger(label: "moongate"), coverage: CoverageRecorder? = nil, counting: InstructionCounting = .exact
    ) throws {
        let (program, chains) = try Self.compileScripts(
            config, modules: modules, clock: clock, logger: logger, coverage: coverage, counting: counting)
        scripts = program
        scriptStateBytes = try program?.validate() ?? 0
        self.id = id
        self.config = config
        self.metricsEnabled = config.metrics.enabled
        self.traceExport = try config.tracing.endpoint.map { try TraceExport(config.tracing, endpoint: $0) }
        self.limits = HeadLimits(
            maxHeaderBytes: config.limits.maxHeaderBytes, maxHeaderCount: config.limits.maxHeaderCount,
            maxURIBytes: config.limits.maxURIBytes)
        self.clientIdleTimeout = TimeAmount(config.timeouts.clientIdle)
        self.requestTimeout = TimeAmount(config.timeouts.request)
        self.routes = config.routes.enumerated().map { index, route in
            CompiledRoute(
                route, index: index, defaultMaxBody: config.limits.maxBodyBytes,
                policy: chains[index].flatMap { program?.chainIndex($0) } ?? route.policy.flatMap { program?.policyIndex($0) } ?? -1)
        }
        self.routesByName = Dictionary(routes.map { ($0.name, $0) }, uniquingKeysWith: { a, _ in a })
        self.routeIndex = RouteIndex(routes)
        var routers: [String: Int] = [:]
        for listener in config.listeners {
            if let module = listener.router, let index = program?.routerIndex(module) { routers[listener.name] = index }
        }
        self.routers = routers
        self.tls = try Self.loadCertificates(config.listeners)
        self.http2Listeners = Set(config.listeners.filter(\.servesHTTP2).map(\.name))
        self.tlsSettings = Dictionary(config.listeners.compactMap { l in l.tls.map { (l.name, $0) } }, uniquingKeysWith: { a, _ in a })
        self.upstreams = try config.upstreams.map { try CompiledUpstream($0) }
        for upstream in config.upstreams where upstream.tls?.verify == false {
            logger.warning("upstream TLS certificates are not verified (verify: false): anyone on the path can pose as it", metadata: ["upstream": "\(upstream.name)"])
        }
    }

    /// Each TLS listener's certificates; a file that does not load is a config problem at
    /// its entry (`gateway.yaml:7 listeners[0].tls.certificates[0]: certs/api.key: ...`).
    static func loadCertificates(_ listeners: [Listener]) throws(ConfigError) -> [String: TLSCertificates] {
        var out: [String: TLSCertificates] = [:]
        var problems: [ConfigDiagnostic] = []
        for listener in listeners {
            guard let tls = listener.tls, !tls.certificates.isEmpty else { continue }
            do {
                out[listener.name] = try TLSCertificates(
                    tls.certificates.map { TLSCertificates.Source(cert: $0.cert, key: $0.key) }, minVersion: tls.minVersion == 13 ? .tls13 : .tls12,
                    clients: tls.clientCA.map { TLSCertificates.ClientVerification(caFile: $0, required: tls.clientAuthRequired) },
                    tickets: tls.sessionTickets ? .process : nil, http2: listener.http2)
            } catch {
                // At the entry whose files failed (the message names the file), else at `tls:`.
                let place = error.source.map { tls.certificates[$0].place } ?? tls.place
                problems.append(place.problem(error.description))
            }
        }
        if !problems.isEmpty { throw ConfigError(problems) }
        return out
    }

    /// Reads the scripts directory for the policies `config`'s routes name; nil when none
    /// does. Call `validate()` on the result to compile and load them.
    public static func loadScripts(
        _ config: GatewayConfig, modules: [any LuaModule] = [], clock: any ScriptClock = SystemClock(),
        logger: Logger = Logger(label: "moongate"), coverage: CoverageRecorder? = nil
    ) throws -> ScriptProgram? {
        try compileScripts(config, modules: modules, clock: clock, logger: logger, coverage: coverage).program
    }

    /// The program, and each route's plugin chain (nil for a route without plugins). Plugin
    /// configs are checked against their schemas here (a `ConfigError` with file:line:path).
    static func compileScripts(
        _ config: GatewayConfig, modules: [any LuaModule], clock: any ScriptClock, logger: Logger, coverage: CoverageRecorder?,
        counting: InstructionCounting = .exact
    ) throws -> (program: ScriptProgram?, chains: [PluginChain?]) {
        var all: [any LuaModule] = [RequestModule(), ResponseModule(), UpstreamModule()] + modules
        for module in PluginModules.make(config: config, clock: clock) where !all.contains(where: { $0.name == module.name }) { all.append(module) }
        var chains: [PluginChain?] = Array(repeating: nil, count: config.routes.count)
        var pluginFiles: [ScriptFile] = []
        if !config.plugins.global.isEmpty || config.routes.contains(where: { !$0.plugins.isEmpty }) || !config.plugins.dirs.isEmpty {
            let catalog = try PluginCatalog.load(dirs: config.plugins.dirs, modules: all)
            chains = try catalog.chains(for: config)
            pluginFiles = catalog.files(for: chains)
        }
        var policies: [String] = []
        for (i, route) in config.routes.enumerated() where chains[i] == nil {
            if let p = route.policy, !policies.contains(p) { policies.append(p) }
        }
        var routers: [String] = []
        for listener in config.listeners { if let r = listener.router, !routers.contains(r) { routers.append(r) } }
        var distinct: [PluginChain] = []
        for case let chain? in chains where !distinct.contains(chain) { distinct.append(chain) }
        if policies.isEmpty, routers.isEmpty, distinct.isEmpty { return (nil, chains) }
        var scripts: ScriptSet
        if let sources = config.scripts.sources {
            scripts = try ScriptSet.make(sources: sources)
        } else {
            scripts = try ScriptSet.load(directory: config.scripts.directory)
        }
        if !pluginFiles.isEmpty { scripts = ScriptSet(directory: scripts.directory, files: Array(scripts.files.values) + pluginFiles) }
        let program = ScriptProgram(
            scripts: scripts, policies: policies, routers: routers, chains: distinct, modules: all, settings: config.scripts, clock: clock,
            logger: logger, coverage: coverage, counting: counting)
        return (program, chains)
    }

    /// The first route matching the request, or nil (through `routeIndex`: the cost of the
    /// path's length, not of the number of routes).
    @inline(__always)
    func match(_ p: UnsafeRawBufferPointer, _ head: RequestHead) -> CompiledRoute? {
        // A few routes are tried in order: the index's walk costs about 200 instructions a
        // request on a short path (callgrind, the bench config), as much as trying eight.
        if routes.count <= Self.routesTriedInOrder { return matchInOrder(p, head) }
        return routeIndex.match(p, head, routes)
    }

    static let routesTriedInOrder = 8

    /// The same answer by trying every route in config order: for a few routes, and the
    /// reference `RouteIndex` is tested against.
    @inline(__always)
    func matchInOrder(_ p: UnsafeRawBufferPointer, _ head: RequestHead) -> CompiledRoute? {
        for route in routes where route.matches(p, head) { return route }
        return nil
    }
}

final class CompiledUpstream: Sendable {
    struct Target: Sendable {
        let key: TargetKey
        let address: SocketAddress
        let weight: Int
    }

    let name: String
    let nameBytes: [UInt8]
    let targets: [Target]
    let settings: PoolSettings
    let balancer: Upstream.Balancer
    /// Tries per request at most (1 + retries).
    let maxTries: Int
    let tryTimeout: TimeAmount
    let retryBudget: Double
    let retryBudgetMin: Int
    /// The upstream's name in `MetricNames.upstreams`.
    let metricID: Int
    /// TLS to the targets: the settings and the client context loaded with this generation.
    let tls: (settings: UpstreamTLS, context: TLSClientContext)?
    let tlsIdentity: UpstreamTLSIdentity?

    init(_ upstream: Upstream) throws {
        if let settings = upstream.tls {
            do {
                let certificate = settings.cert.flatMap { cert in settings.key.map { TLSCertificates.Source(cert: cert, key: $0) } }
                let context = try TLSClientContext(
                    caFile: settings.caFile, certificate: certificate, verify: settings.verify, minVersion: settings.minVersion == 13 ? .tls13 : .tls12)
                self.tls = (settings, context)
            } catch {
                throw ConfigError([settings.place.problem(error.description)])
            }
            self.tlsIdentity = UpstreamTLSIdentity(settings)
        } else {
            self.tls = nil
            self.tlsIdentity = nil
        }
        self.name = upstream.name
        self.nameBytes = Array(upstream.name.utf8)
        self.metricID = MetricNames.upstreams.id(upstream.name)
        self.balancer = upstream.balancer
        self.maxTries = 1 + upstream.retries
        self.tryTimeout = TimeAmount(upstream.tryTimeout ?? upstream.readTimeout)
        self.retryBudget = upstream.retryBudget
        self.retryBudgetMin = upstream.retryBudgetMin
        let tlsIdentity = self.tlsIdentity
        self.targets = try upstream.targets.map { t in
            let address = try SocketAddress.makeAddressResolvingHost(t.address.host, port: t.address.port)
            return Target(key: TargetKey(host: t.address.host, port: t.address.port, tls: tlsIdentity, h2: upstream.h2), address: address, weight: t.weight)
        }
        self.settings = PoolSettings(
            connectTimeout: TimeAmount(upstream.connectTimeout), readTimeout: TimeAmount(upstream.readTimeout),
            maxIdle: upstream.maxIdleConnections, idleTimeout: TimeAmount(upstream.idleTimeout),
            ejectAfter: upstream.ejectAfter, ejectTime: TimeAmount(upstream.ejectTime), maxEjectTime: TimeAmount(upstream.maxEjectTime),
            breaker: TargetBreaker.Settings(
                failures: upstream.breaker.failures, ratio: upstream.breaker.ratio, minRequests: upstream.breaker.minRequests,
                window: TimeAmount(upstream.breaker.window), openTime: TimeAmount(upstream.breaker.openTime), probes: upstream.breaker.probes),
            maxConnections: upstream.maxConnections, queue: upstream.queue, queueTimeout: TimeAmount(upstream.queueTimeout), h2: upstream.h2)
    }
}

/// Identifies one origin server; pools are kept per target, so a reload that keeps a target
/// keeps its warm connections.
struct TargetKey: Hashable, Sendable {
    let host: String
    let port: Int
    /// How connections to it speak TLS (nil: plaintext): the same address with other TLS
    /// settings is another pool, never handed a connection made for different settings.
    var tls: UpstreamTLSIdentity? = nil
    /// HTTP/2 connections (`protocol: h2`) are another pool too.
    var h2 = false
}

/// An upstream's TLS settings without where they are written: what makes its connections
/// interchangeable.
struct UpstreamTLSIdentity: Hashable, Sendable {
    var sni: String?
    var caFile: String?
    var cert: String?
    var key: String?
    var verify: Bool
    var minVersion: Int

    init(_ tls: UpstreamTLS) {
        sni = tls.sni
        caFile = tls.caFile
        cert = tls.cert
        key = tls.key
        verify = tls.verify
        minVersion = tls.minVersion
    }
}

/// What a pool's connections need for TLS: the generation's client context, and what the
/// certificate is checked against.
struct UpstreamTLSClient {
    let context: TLSClientContext
    /// Sent as SNI and verified: `sni`, else the target's host when it is a name.
    let serverName: String?
    /// Verified when there is no name: the target's IP address.
    let address: String?

    init(context: TLSClientContext, settings: UpstreamTLS, host: String) {
        self.context = context
        let isAddress = (try? SocketAddress(ipAddress: host, port: 0)) != nil
        serverName = settings.sni ?? (isAddress ? nil : host)
        address = serverName == nil ? host : nil
    }
}

struct PoolSettings: Sendable, Equatable {
    var connectTimeout: TimeAmount
    var readTimeout: TimeAmount
    var maxIdle: Int
    var idleTimeout: TimeAmount
    var ejectAfter = 3
    var ejectTime = TimeAmount.seconds(1)
    var maxEjectTime = TimeAmount.seconds(30)
    var breaker = TargetBreaker.Settings()
    var maxConnections = 0
    var queue = 256
    var queueTimeout = TimeAmount.seconds(1)
    /// The targets speak HTTP/2: a pooled "connection" is a stream lane on a shared one.
    var h2 = false
}

extension TimeAmount {
    init(_ duration: Duration) {
        let (seconds, attoseconds) = duration.components
        self = .nanoseconds(seconds * 1_000_000_000 + attoseconds / 1_000_000_000)
    }
}
