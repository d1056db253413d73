import Config
import NIOCore

/// One immutable, validated snapshot of the configuration, compiled for the data plane.
/// Built off the event loops, then handed to every worker; a request keeps the generation it
/// started with until it ends, so a reload never changes a request half-way.
public final class ProxyGeneration: Sendable {
    /// Increases by one per successful load.
    public let id: Int
    public let config: GatewayConfig
    let routes: [CompiledRoute]
    let limits: HeadLimits
    /// Per upstream (same indices as the config), its targets with resolved addresses.
    let upstreams: [CompiledUpstream]
    let clientIdleTimeout: TimeAmount
    let requestTimeout: TimeAmount

    /// Compiles `config`. Resolves target host names (a blocking lookup: call it off the event loops).
    public init(id: Int, config: GatewayConfig) throws {
        self.id = id
        self.config = config
        self.limits = HeadLimits(
            maxHeaderBytes: config.limits.maxHeaderBytes, maxHeaderCount: config.limits.maxHeaderCount,
            maxURIBytes: config.limits.maxURIBytes)
        self.clientIdleTimeout = TimeAmount(config.timeouts.clientIdle)
        self.requestTimeout = TimeAmount(config.timeouts.request)
        self.routes = config.routes.map { CompiledRoute($0, defaultMaxBody: config.limits.maxBodyBytes) }
        self.upstreams = try config.upstreams.map { try CompiledUpstream($0) }
    }

    /// The first route matching the request, or nil.
    @inline(__always)
    func match(_ p: UnsafeRawBufferPointer, _ head: RequestHead) -> CompiledRoute? {
        for route in routes where route.matches(p, head) { return route }
        return nil
    }
}

struct CompiledUpstream: Sendable {
    struct Target: Sendable {
        let key: TargetKey
        let address: SocketAddress
        let weight: Int
    }

    let name: String
    let targets: [Target]
    let settings: PoolSettings

    init(_ upstream: Upstream) throws {
        self.name = upstream.name
        self.targets = try upstream.targets.map { t in
            let address = try SocketAddress.makeAddressResolvingHost(t.address.host, port: t.address.port)
            return Target(key: TargetKey(host: t.address.host, port: t.address.port), address: address, weight: t.weight)
        }
        self.settings = PoolSettings(
            connectTimeout: TimeAmount(upstream.connectTimeout), readTimeout: TimeAmount(upstream.readTimeout),
            maxIdle: upstream.maxIdleConnections, idleTimeout: TimeAmount(upstream.idleTimeout))
    }
}

/// Identifies one origin server; pools are kept per target, so a reload that keeps a target
/// keeps its warm connections.
struct TargetKey: Hashable, Sendable {
    let host: String
    let port: Int
}

struct PoolSettings: Sendable, Equatable {
    var connectTimeout: TimeAmount
    var readTimeout: TimeAmount
    var maxIdle: Int
    var idleTimeout: TimeAmount
}

extension TimeAmount {
    init(_ duration: Duration) {
        let (seconds, attoseconds) = duration.components
        self = .nanoseconds(seconds * 1_000_000_000 + attoseconds / 1_000_000_000)
    }
}
