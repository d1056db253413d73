#if canImport(Glibc)
import Glibc
#endif
import Auth
import Config
import FoundationEssentials
import HTTPClient
import Logging
import NIOCore
import NIOPosix
import Prometheus
import Plugins
import Proxy
import RateLimit
import Scripting
import SocketLoop
import Telemetry

/// The running gateway: one event loop per worker, each with its own `ProxyWorker`, and the
/// listeners bound once per loop with `SO_REUSEPORT` so the kernel spreads connections and
/// each connection lives on one loop from accept to close (thread-per-core, as nginx does).
///
/// This actor is the control plane only (load, reload, drain); requests never touch it.
public actor Gateway {
    /// The outcome of a load or reload, for logs and the status endpoint.
    public struct ReloadResult: Sendable {
        public var generation: Int
        public var errors: [String]
        /// The same problems, each with its place in the document (for the admin API).
        public var problems: [ConfigProblem] = []
        public var succeeded: Bool { errors.isEmpty }

        public init(generation: Int, errors: [String]) {
            self.generation = generation
            self.errors = errors
        }
    }

    public let configPath: String
    private let workerOverride: Int?
    private let environment: [String: String]
    private var logger: Logger
    /// The workers' loops: the gateway's own epoll loops (`SocketLoop`), one per core.
    private var group: SocketLoopGroup?
    /// A NIO loop for the admin listener, which uses NIO's server bootstrap and HTTP codec.
    private var adminGroup: MultiThreadedEventLoopGroup?
    var workers: [NIOLoopBound<ProxyWorker>] = []
    private var listeners: [SocketAddressSpec: RunningListener] = [:]
    private(set) public var generation: ProxyGeneration?
    /// The config store's document the running generation was built from (nil: the file's).
    private(set) public var storeDocument: ConfigDocument?
    /// The config store this gateway follows (`store.kind: postgres`), nil for a file.
    private(set) var controlPlane: ControlPlane?
    /// What the last `check(_:keep:)` built, ready for its `apply`.
    private var checked: (document: ConfigDocument, prepared: Prepared, readAt: Date)?
    /// Who may use the admin API (`admin.token_file`), as of the last load.
    private(set) var adminTokens = AdminTokens.open
    let storeRefusals: Prometheus.Counter
    private(set) public var lastReload: ReloadResult?
    /// When the files of the last attempted load were read (before reading them).
    private(set) public var lastReadAt = Date.distantPast
    /// Background fetches of JWKS URLs, for the current generation's keysets.
    private var jwksTasks: [Task<Void, Never>] = []
    /// Active health checks of the current generation's upstreams.
    private var probeTasks: [Task<Void, Never>] = []
    /// Per target (`host:port`): whether the probes find it healthy, and the streak that will
    /// flip that; kept across reloads.
    var probed: [String: (healthy: Bool, streak: Int)] = [:]
    /// The last keys each JWKS URL gave, kept across reloads.
    private var lastJWKS: [String: KeyList] = [:]
    private var nextGenerationID = 1
    /// The local rate-limit store: the process's, kept across reloads.
    private var localBuckets: LocalBuckets?
    /// The embedded `kv` store: one per process, kept across reloads (sessions live in it).
    private let kvStore = MemoryKV()
    /// Clients for the config's Redis servers, kept across reloads that keep the servers.
    private var redisBuckets: RedisBuckets?
    /// Rate-limit decisions taken without Redis, since start.
    private let bucketCounters = BucketCounters()
    /// The metrics scripts declared (kept across reloads, so counters keep counting).
    var scriptFamilies = ScriptMetricFamilies()
    /// Control-plane metrics (reloads) and anything reported through swift-metrics when the
    /// binary bootstraps it with this registry; rendered first on `/metrics`.
    public nonisolated let prometheus = PrometheusCollectorRegistry()
    let reloadsSucceeded: Prometheus.Counter
    let reloadsFailed: Prometheus.Counter
    let startedAt = Date()
    /// Version shown on `/status` and in `moongate_build_info`.
    let version: String
    /// Set when shutdown starts: `/readyz` answers 503 so load balancers stop sending.
    var draining = false
    var admin: AdminServer?

    private struct RunningListener {
        let listener: Listener
        let handle: ListenerHandle
        let sockets: [NIOLoopBound<TCPListener>]
        let port: Int

        func close() async { await Self.close(sockets) }

        static func close(_ sockets: [NIOLoopBound<TCPListener>]) async {
            for socket in sockets { try? await socket.eventLoop.submit { socket.value.close() }.get() }
        }
    }

    public init(configPath: String, workers: Int? = nil, environment: [String: String], logger: Logger, version: String = "dev") {
        self.version = version
        let reloads = MetricNameDescriptor(
            namespace: "moongate", metricName: "reloads", unitName: "total", helpText: "Config and script reloads, by result.")
        reloadsSucceeded = prometheus.makeCounter(descriptor: reloads, labels: [("result", "success")])
        reloadsFailed = prometheus.makeCounter(descriptor: reloads, labels: [("result", "failure")])
        storeRefusals = prometheus.makeCounter(
            descriptor: MetricNameDescriptor(
                namespace: "moongate", metricName: "config_store_refused", unitName: "total",
                helpText: "Config store versions this gateway refused (they failed its validation)."))
        self.configPath = configPath
        self.workerOverride = workers
        self.environment = environment
        self.logger = logger
    }

    /// Loads the configuration (with a config store's `document` over the file's dynamic
    /// part) and starts serving; throws `ConfigError` if it does not validate.
    public func start() async throws {
        lastReadAt = Date()
        var document: ConfigDocument?
        let settings = try ConfigLoader.storeSettings(path: configPath, environment: environment)
        if settings.kind == .postgres {
            let plane = try ControlPlane(settings: settings, logger: logger)
            let (path, environment) = (configPath, self.environment)
            do {
                document = try await plane.bootstrap(seed: { try Self.fileDocument(path: path, environment: environment) })
            } catch {
                await plane.stop()
                throw error
            }
            controlPlane = plane
        }
        let config: GatewayConfig
        do {
            config = try ConfigLoader.load(path: configPath, environment: environment, document: document)
            adminTokens = try config.adminTokenFile.map { file throws(ConfigError) in try AdminTokens.load(file: file) } ?? .open
        } catch {
            await controlPlane?.stop()
            controlPlane = nil
            throw error
        }
        storeDocument = document
        let count = workerOverride ?? config.workers ?? System.coreCount
        let group = try SocketLoopGroup(count: count, name: "worker")
        scriptFamilies = ScriptMetricFamilies(maxSeries: config.metrics.maxSeries)
        let modules: [any LuaModule]
        let generation: ProxyGeneration
        do {
            modules = try AuthModules.make(config)
            let local = LocalBuckets(slots: config.rateLimit.localKeys)
            let redis = config.redis.isEmpty ? nil : try await RedisBuckets.make(servers: config.redis, group: group, logger: logger)
            localBuckets = local
            redisBuckets = redis
            let buckets = RateLimitModules.make(config: config, local: local, redis: redis, counters: bucketCounters, logger: logger)
            generation = try ProxyGeneration(
                id: nextGenerationID, config: config, modules: modules + buckets + [MetricsModule(families: scriptFamilies), kvModule(config, redis)], logger: logger,
                counting: .onDemand)
        } catch {
            try? await group.shutdownGracefully()
            await controlPlane?.stop()
            controlPlane = nil
            throw error
        }
        nextGenerationID += 1
        self.group = group
        var workers: [NIOLoopBound<ProxyWorker>] = []
        for loop in group.makeIterator() {
            let logger = self.logger
            let worker = try await loop.submit {
                NIOLoopBound(ProxyWorker(eventLoop: loop, generation: generation, logger: logger), eventLoop: loop)
            }.get()
            workers.append(worker)
        }
        self.workers = workers
        // Keys from JWKS URLs before the first request (a provider that does not answer in
        // time leaves those keysets empty until the background fetch succeeds).
        await startJWKS(Self.remotes(modules), initialFetch: true)
        startProbes(config)
        for listener in config.listeners {
            listeners[listener.address] = try await bind(listener)
        }
        self.generation = generation
        lastReload = ReloadResult(generation: generation.id, errors: [])
        if let address = config.admin {
            let adminGroup = MultiThreadedEventLoopGroup(numberOfThreads: 1)
            self.adminGroup = adminGroup
            admin = try await AdminServer.start(address, gateway: self, group: adminGroup, logger: logger)
            if adminTokens.isOpen {
                logger.warning("the admin API has no tokens (admin.token_file): any local process can change the configuration")
            }
        }
        await controlPlane?.follow(self)
        logger.info(
            "gateway started",
            metadata: [
                "generation": "\(generation.id)", "workers": "\(count)", "lua_state_bytes": "\(generation.scriptStateBytes)",
                "listeners": "\(listeners.values.map { "\($0.listener.name)=\($0.listener.address.host):\($0.port)" }.sorted().joined(separator: ","))",
            ])
    }

    /// The port each listener is bound to, by listener name (useful when the config says port 0).
    public func boundPorts() -> [String: Int] {
        Dictionary(uniqueKeysWithValues: listeners.values.map { ($0.listener.name, $0.port) })
    }

    /// Re-reads the configuration. A file that fails to load changes nothing: the current
    /// generation keeps serving and the errors are returned (and logged). With a config store,
    /// the store's last document applied stands in for the file's dynamic part.
    @discardableResult
    public func reload() async -> ReloadResult {
        await load(document: storeDocument)
    }

    /// Applies `document` (from the config store) over the file's static part: one new
    /// generation on every worker, or nothing changed and the problems returned.
    ///
    /// `committing` runs once the new generation is certain to serve, before the first worker
    /// switches: the control plane records the version there, so that no request is ever
    /// served by a newer version than the admin API reports.
    @discardableResult
    public func apply(_ document: ConfigDocument, committing: @Sendable () async -> Void = {}) async -> ReloadResult {
        await load(document: document, committing: committing)
    }

    /// Checks `document` as `apply` would (the file's static part, every field, the scripts
    /// compiled and loaded) without applying it: the admin API's `dry_run`.
    ///
    /// With `keep`, the generation built stays ready for an `apply` of the same document that
    /// comes before any other load (the admin API checks, stores, then applies: built once).
    public func check(_ document: ConfigDocument, keep: Bool = false) async -> [ConfigProblem] {
        do {
            let readAt = Date()
            let prepared = try await prepare(document: document)
            if keep {
                if let previous = checked { await discard(previous.prepared) }
                checked = (document, prepared, readAt)
            } else {
                await discard(prepared)
            }
            return []
        } catch {
            return ConfigProblem.from(error, file: configPath)
        }
    }

    /// The generation `check(_:keep:)` built for `document`, if it is still what a load would
    /// build now: no other load since (its id is the next one) and the file not changed since
    /// it was read.
    private func takeChecked(_ document: ConfigDocument?) async -> Prepared? {
        guard let kept = checked else { return nil }
        checked = nil
        let modified = (try? FileManager.default.attributesOfItem(atPath: configPath))?[.modificationDate] as? Date
        if let document, kept.document == document, kept.prepared.generation.id == nextGenerationID, let modified, modified < kept.readAt {
            return kept.prepared
        }
        await discard(kept.prepared)
        return nil
    }

    /// A generation built and checked but not yet serving, with what it needs.
    private struct Prepared {
        let config: GatewayConfig
        let tokens: AdminTokens
        let generation: ProxyGeneration
        let modules: [any LuaModule]
        let redis: RedisBuckets?
    }

    /// Reads the file (with `document` over it), makes the modules and compiles the generation.
    private func prepare(document: ConfigDocument?, meter: BackgroundWork.Meter? = nil) async throws -> Prepared {
        guard let local = localBuckets else { throw NotStarted() }
        let (path, environment) = (configPath, self.environment)
        let (config, tokens, modules) = try await BackgroundWork.run(meter: meter) {
            let config = try ConfigLoader.load(path: path, environment: environment, document: document)
            let tokens = try config.adminTokenFile.map { file throws(ConfigError) in try AdminTokens.load(file: file) } ?? .open
            return (config, tokens, try AuthModules.make(config))
        }
        var nextRedis = redisBuckets
        if config.redis.isEmpty {
            nextRedis = nil
        } else if let group, redisBuckets?.serves(config.redis) != true {
            nextRedis = try await RedisBuckets.make(servers: config.redis, group: group, logger: logger)
        }
        do {
            let buckets = RateLimitModules.make(config: config, local: local, redis: nextRedis, counters: bucketCounters, logger: logger)
            let (id, all, logger) = (nextGenerationID, modules + buckets + [MetricsModule(families: scriptFamilies), kvModule(config, nextRedis)], self.logger)
            let generation = try await BackgroundWork.run(meter: meter) {
                try ProxyGeneration(id: id, config: config, modules: all, logger: logger, counting: .onDemand)
            }
            return Prepared(config: config, tokens: tokens, generation: generation, modules: modules, redis: nextRedis)
        } catch {
            if let nextRedis, nextRedis !== redisBuckets { await nextRedis.close() }
            throw error
        }
    }

    /// `kv` for a generation: the embedded store (kept across reloads), and the generation's
    /// Redis connections when `kv.store` names a server.
    private func kvModule(_ config: GatewayConfig, _ redis: RedisBuckets?) -> KVModule {
        let server = config.redis.firstIndex { $0.name == config.kv.store }
        guard let redis, let server else { return KVModule(store: kvStore, logger: logger) }
        return KVModule(store: kvStore, redis: (redis, server, config.kv.prefix), logger: logger)
    }

    /// Lets go of what `prepare` opened for a generation that will not serve.
    private func discard(_ prepared: Prepared) async {
        if let redis = prepared.redis, redis !== redisBuckets { await redis.close() }
    }

    private struct NotStarted: Error, CustomStringConvertible {
        var description: String { "not started" }
    }

    private func load(document: ConfigDocument?, committing: @Sendable () async -> Void = {}) async -> ReloadResult {
        guard let current = generation else { return ReloadResult(generation: 0, errors: ["not started"]) }
        lastReadAt = Date()
        let began = ContinuousClock.now
        let meter = BackgroundWork.Meter()
        let prepared: Prepared
        do {
            if let ready = await takeChecked(document) {
                prepared = ready
            } else {
                prepared = try await prepare(document: document, meter: meter)
            }
        } catch {
            return rejected(current, ConfigProblem.from(error, file: configPath))
        }
        let config = prepared.config, next = prepared.generation, nextModules = prepared.modules, nextRedis = prepared.redis

        // Open new listeners first: if one cannot bind, nothing has changed yet.
        let wanted = Set(config.listeners.map(\.address))
        var opened: [SocketAddressSpec: RunningListener] = [:]
        for listener in config.listeners where listeners[listener.address] == nil {
            do {
                opened[listener.address] = try await bind(listener)
            } catch {
                for l in opened.values { await l.close() }
                await discard(prepared)
                return rejected(current, [ConfigProblem(pointer: "", message: "\(configPath): \(error)")])
            }
        }
        nextGenerationID += 1
        // The new keysets start with the keys last fetched for their URL, so no request
        // finds them empty; then the workers switch.
        await startJWKS(Self.remotes(nextModules), initialFetch: false)
        startProbes(config)
        // The document becomes the running one before the first worker serves it: the admin
        // API must never show an older version than some request already sees.
        if let document { storeDocument = document }
        await committing()
        for worker in workers {
            try? await worker.eventLoop.submit { worker.value.install(next) }.get()
        }
        listeners.merge(opened) { $1 }
        for (address, running) in listeners where !wanted.contains(address) {
            listeners[address] = nil
            await running.close()
            for worker in workers {
                let handle = running.handle
                try? await worker.eventLoop.submit { worker.value.drain(listener: handle) }.get()
            }
            logger.info("listener removed", metadata: ["listener": "\(running.listener.name)"])
        }
        let effectiveWorkers = workerOverride ?? config.workers ?? System.coreCount
        if effectiveWorkers != workers.count {
            logger.warning("workers changed in the config; takes effect on restart", metadata: ["running": "\(workers.count)"])
        }
        if let old = redisBuckets, old !== nextRedis {
            // Commands in flight on the old connections get their answers first.
            let grace = (old.servers.map(\.commandTimeout).max() ?? .zero) * 4
            Task {
                try? await Task.sleep(for: grace)
                await old.close()
            }
        }
        redisBuckets = nextRedis
        if config.rateLimit.localKeys != current.config.rateLimit.localKeys {
            logger.warning("rate_limit.local_keys changed in the config; takes effect on restart")
        }
        generation = next
        adminTokens = prepared.tokens
        reloadsSucceeded.increment()
        if config.admin != current.config.admin {
            logger.warning("admin.address changed in the config; takes effect on restart")
        }
        if config.metrics.maxSeries != current.config.metrics.maxSeries {
            logger.warning("metrics.max_series changed in the config; takes effect on restart")
        }
        let result = ReloadResult(generation: next.id, errors: [])
        lastReload = result
        let took = ContinuousClock.now - began
        logger.info(
            "config reloaded",
            metadata: [
                "generation": "\(next.id)", "lua_state_bytes": "\(next.scriptStateBytes)", "routes": "\(config.routes.count)",
                "ms": "\(took.components.seconds * 1000 + took.components.attoseconds / 1_000_000_000_000_000)", "cpu_ms": "\(meter.milliseconds)",
            ])
        return result
    }

    private func rejected(_ current: ProxyGeneration, _ problems: [ConfigProblem]) -> ReloadResult {
        reloadsFailed.increment()
        for problem in problems { logger.error("config reload rejected: \(problem.text)") }
        logger.error("still serving the last good config", metadata: ["generation": "\(current.id)"])
        var result = ReloadResult(generation: current.id, errors: problems.map(\.text))
        result.problems = problems
        lastReload = result
        return result
    }

    /// Stops accepting, lets requests in flight finish for up to the drain timeout, then closes
    /// everything and stops the event loops.
    public func shutdown() async {
        guard let group else { return }
        draining = true
        for task in jwksTasks { task.cancel() }
        jwksTasks = []
        for task in probeTasks { task.cancel() }
        probeTasks = []
        let drain = TimeAmount(generation?.config.timeouts.drain ?? .seconds(10))
        for running in listeners.values { await running.close() }
        listeners = [:]
        // Every question to a worker is bounded by the drain deadline (plus a second for the
        // last steps): a worker that does not answer is left behind, and the process exits.
        let deadline = NIODeadline.now() + drain
        func left() -> TimeAmount { max(deadline - .now(), .zero) + .seconds(1) }
        var stuck: Set<Int> = []
        for (index, worker) in workers.enumerated() {
            guard let lua = await worker.eventLoop.answer(within: left(), { worker.value.luaStats }) else {
                stuck.insert(index)
                continue
            }
            if lua.interpreters > 0 {
                logger.info(
                    "lua states",
                    metadata: [
                        "worker": "\(index)", "lua_states": "\(lua.interpreters)", "lua_contexts": "\(lua.contexts)", "lua_heap_bytes": "\(lua.heapBytes)",
                    ])
            }
        }
        for (index, worker) in workers.enumerated() where !stuck.contains(index) {
            if await worker.eventLoop.answer(within: left(), { worker.value.drain() }) == nil { stuck.insert(index) }
        }
        while NIODeadline.now() < deadline {
            var open = 0
            for (index, worker) in workers.enumerated() where !stuck.contains(index) {
                guard let count = await worker.eventLoop.answer(within: left(), { worker.value.connectionCount }) else {
                    stuck.insert(index)
                    continue
                }
                open += count
            }
            if open == 0 { break }
            try? await Task.sleep(for: .milliseconds(20))
        }
        for (index, worker) in workers.enumerated() where !stuck.contains(index) {
            if await worker.eventLoop.answer(within: .seconds(1), { worker.value.closeAll() }) == nil { stuck.insert(index) }
        }
        for index in stuck.sorted() {
            logger.error("worker did not answer within the drain timeout; leaving it behind", metadata: ["worker": "\(index)"])
        }
        await redisBuckets?.close()
        redisBuckets = nil
        await controlPlane?.stop()
        controlPlane = nil
        self.workers = []
        await admin?.close()
        admin = nil
        self.group = nil
        if stuck.isEmpty {
            try? await group.shutdownGracefully()
        } else {
            // A stuck loop never stops: the others are stopped, and the process exits anyway.
            for (index, loop) in group.loops.enumerated() where !stuck.contains(index) { try? await loop.shutdownGracefully() }
        }
        try? await adminGroup?.shutdownGracefully()
        adminGroup = nil
        logger.info("gateway stopped")
    }

    /// Requests let through and refused since start because Redis could not answer.
    public func rateLimitFailures() -> (open: Int, closed: Int) { bucketCounters.failures }

    /// Lua interpreters, request contexts and heap bytes across workers, for tests and figures.
    public func luaStats() async -> LuaPoolStats {
        var total = LuaPoolStats()
        for worker in workers {
            total = total + ((try? await worker.eventLoop.submit { worker.value.luaStats }.get()) ?? LuaPoolStats())
        }
        return total
    }

    // MARK: JWKS URLs

    static func remotes(_ modules: [any LuaModule]) -> [RemoteKeys] {
        modules.compactMap { ($0 as? JWTModule)?.keysets.remotes }.flatMap { $0 }
    }

    static func key(_ url: JWKSURL) -> String { url.endpoint.description }

    /// Gives `remotes` the last keys of their URLs (or fetches them first), then keeps them
    /// fresh in the background, replacing the previous generation's fetchers.
    private func startJWKS(_ remotes: [RemoteKeys], initialFetch: Bool) async {
        for task in jwksTasks { task.cancel() }
        jwksTasks = []
        for remote in remotes {
            let key = Self.key(remote.url)
            if lastJWKS[key] == nil, initialFetch { _ = await fetchJWKS(remote) }
            if let keys = lastJWKS[key] { await publish(keys, to: remote) }
            let refresh = remote.url.refresh
            jwksTasks.append(Task { [weak self] in
                var due = ContinuousClock.now + refresh
                var last = ContinuousClock.now
                while !Task.isCancelled {
                    let now = ContinuousClock.now
                    let asked = remote.takeRefetchRequest() && now - last >= remote.url.minRefetch
                    if now >= due || asked {
                        last = now
                        let next = await self?.fetchJWKS(remote) ?? nil
                        due = ContinuousClock.now + (next ?? min(refresh, .seconds(30)))
                    }
                    try? await Task.sleep(for: .milliseconds(100))
                }
            })
        }
    }

    /// Probes every target of the upstreams that have a `health_check`, each on its own
    /// interval, replacing the previous generation's probes (what they found is kept).
    private func startProbes(_ config: GatewayConfig) {
        for task in probeTasks { task.cancel() }
        probeTasks = []
        guard let group else { return }
        var seen: Set<String> = []
        for upstream in config.upstreams {
            guard let check = upstream.healthCheck else { continue }
            for target in upstream.targets {
                let name = "\(target.address.host):\(target.address.port)"
                guard seen.insert(name).inserted else { continue }
                // A TLS upstream is probed over TLS, as its requests go (name, CA, client certificate).
                var endpoint = HTTPEndpoint(host: target.address.host, port: target.address.port, path: check.path, tls: upstream.tls != nil)
                endpoint.upstreamTLS = upstream.tls
                probeTasks.append(Task { [weak self] in
                    guard let probe = try? HTTPFetch.Target(endpoint) else { return }
                    while !Task.isCancelled {
                        let healthy: Bool
                        do {
                            let answer = try await HTTPFetch.get(probe, group: group, timeout: TimeAmount(check.timeout), maxBytes: 64 * 1024)
                            healthy = check.expect.contains(answer.status)
                        } catch {
                            healthy = false
                        }
                        await self?.probed(name, healthy: healthy, check: check)
                        try? await Task.sleep(for: check.interval)
                    }
                })
            }
        }
    }

    /// One probe's result: a streak long enough flips the target, on every worker.
    private func probed(_ target: String, healthy: Bool, check: Upstream.HealthCheck) async {
        var state = probed[target] ?? (healthy: true, streak: 0)
        if healthy == state.healthy {
            state.streak = 0
        } else {
            state.streak += 1
            if state.streak >= (healthy ? check.healthy : check.unhealthy) {
                state = (healthy, 0)
                logger.log(
                    level: healthy ? .notice : .warning, healthy ? "health check: target healthy again" : "health check: target unhealthy",
                    metadata: ["target": "\(target)", "path": "\(check.path)"])
                for worker in workers { try? await worker.eventLoop.submit { worker.value.setProbed(target, healthy: healthy) }.get() }
            }
        }
        probed[target] = state
    }

    /// Fetches, parses and publishes a JWKS; returns how long it may be kept (nil: failed,
    /// and the last good keys keep serving).
    private func fetchJWKS(_ remote: RemoteKeys) async -> Duration? {
        guard let group else { return nil }
        let url = remote.url
        do {
            let answer = try await HTTPFetch.get(try HTTPFetch.Target(url.endpoint), group: group)
            guard answer.status == 200 else { throw HTTPFetch.Failure(.status, "status \(answer.status)") }
            let keys = try KeyList.parse(jwks: answer.body, keyset: remote.keyset, source: Self.key(url))
            lastJWKS[Self.key(url)] = keys
            await publish(keys, to: remote)
            logger.info("JWKS fetched", metadata: ["keyset": "\(remote.keyset)", "keys": "\(keys.count)"])
            return HTTPFetch.maxAge(answer.cacheControl).map { .seconds($0) } ?? url.refresh
        } catch {
            logger.warning(
                "JWKS fetch failed; the last good keys keep serving",
                metadata: ["keyset": "\(remote.keyset)", "url": "\(Self.key(url))", "error": "\(error)"])
            return nil
        }
    }

    private func publish(_ keys: KeyList, to remote: RemoteKeys) async {
        for worker in workers {
            try? await worker.eventLoop.submit { remote.publish(keys) }.get()
        }
    }

    /// Per target (`host:port`), how many workers have it ejected, for tests and the status page.
    public func ejectedTargets() async -> [String: Int] {
        var out: [String: Int] = [:]
        for worker in workers {
            let health = (try? await worker.eventLoop.submit { worker.value.targetHealth.mapValues(\.ejected) }.get()) ?? [:]
            for (target, ejected) in health { out[target, default: 0] += ejected ? 1 : 0 }
        }
        return out
    }

    /// Per target (`host:port`), each worker's circuit breaker state, for tests and the status page.
    public func breakerStates() async -> [String: [String]] {
        var out: [String: [String]] = [:]
        for worker in workers {
            let health = (try? await worker.eventLoop.submit { worker.value.targetHealth.mapValues(\.breaker) }.get()) ?? [:]
            for (target, state) in health { out[target, default: []].append(state) }
        }
        return out
    }

    /// Runs `body` on each worker's thread and returns what each returned (tests: what a
    /// worker's thread has done, such as the allocations it made).
    public func onEachWorker<T: Sendable>(_ body: @escaping @Sendable () -> T) async -> [T] {
        var out: [T] = []
        for worker in workers {
            if let value = try? await worker.eventLoop.submit(body).get() { out.append(value) }
        }
        return out
    }

    /// Client and upstream connections open across workers, for tests.
    public func connectionCounts() async -> (clients: Int, upstreams: Int) {
        await sumOverWorkers { ($0.connectionCount, $0.upstreamConnectionCount) }
    }

    /// Requests in progress across workers (connections holding an exchange) and the spare
    /// exchanges the workers keep, for tests.
    public func exchangeCounts() async -> (inUse: Int, spare: Int) {
        await sumOverWorkers { $0.exchangeCounts }
    }

    /// Two counts read on each worker's loop, summed across workers.
    private func sumOverWorkers(_ read: @escaping @Sendable (ProxyWorker) -> (Int, Int)) async -> (Int, Int) {
        var first = 0, second = 0
        for worker in workers {
            let (a, b) = (try? await worker.eventLoop.submit { read(worker.value) }.get()) ?? (0, 0)
            first += a
            second += b
        }
        return (first, second)
    }

    /// Binds `listener` on every loop. With port 0 the first bind picks the port and the
    /// others join it, so the listener is one port however many loops serve it.
    private func bind(_ listener: Listener) async throws -> RunningListener {
        // SO_REUSEPORT would let us join a port another process (a second moongate started by
        // mistake, or anything of the same user) already listens on, silently splitting its
        // traffic. A plain bind first turns that into "address in use".
        let handle = ListenerHandle(name: listener.name)
        var sockets: [NIOLoopBound<TCPListener>] = []
        var port = listener.address.port
        let logger = self.logger
        do {
            if port != 0 { try PortProbe.ensureFree(host: listener.address.host, port: port) }
            guard let group else { throw ListenerError(listener: listener, reason: "not started") }
            for (loop, worker) in zip(group.loops, workers) {
                let address = try SocketAddress.makeAddressResolvingHost(listener.address.host, port: port)
                let (socket, bound) = try await loop.submit { () -> (NIOLoopBound<TCPListener>, Int) in
                    let socket = try TCPListener(address: address, on: loop, reusePort: true, backlog: 4096) { connection in
                        // A failed start leaves the socket unregistered; its deinit closes it.
                        try? worker.value.accept(connection, listener: handle)
                    }
                    // At most one line a minute per loop: the condition lasts, the pauses repeat.
                    var lastWarned = NIODeadline.distantPast
                    socket.onAcceptError = { error in
                        let now = NIODeadline.now()
                        guard now - lastWarned >= .seconds(60) else { return }
                        lastWarned = now
                        logger.warning(
                            "accept failed; accepting paused for 100 ms at a time while it lasts",
                            metadata: ["listener": "\(listener.name)", "error": "\(error)"])
                    }
                    socket.admit = { worker.value.admitsConnection }
                    var lastFull = NIODeadline.distantPast
                    socket.onFull = {
                        let now = NIODeadline.now()
                        guard now - lastFull >= .seconds(60) else { return }
                        lastFull = now
                        logger.warning(
                            "connection limit reached (limits.max_connections); accepting paused until one closes",
                            metadata: ["listener": "\(listener.name)"])
                    }
                    return (NIOLoopBound(socket, eventLoop: loop), socket.localAddress.port ?? 0)
                }.get()
                sockets.append(socket)
                port = bound
            }
        } catch {
            await RunningListener.close(sockets)
            throw ListenerError(listener: listener, reason: "\(error)")
        }
        return RunningListener(listener: listener, handle: handle, sockets: sockets, port: port)
    }
}

/// A listener that could not open, naming it and its address.
public struct ListenerError: Error, CustomStringConvertible {
    public let listener: Listener
    public let reason: String

    public var description: String { "listener \"\(listener.name)\" cannot listen on \(listener.address): \(reason)" }
}
