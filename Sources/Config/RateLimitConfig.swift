/// A Redis deployment that scripts' rate-limit buckets (`redis_bucket.take(key, {store = name})`)
/// and the `kv` store may live in: one server, a Redis Cluster, or a primary that Sentinel
/// names. Each worker keeps one pipelined connection to each server it talks to.
public struct RedisServer: Sendable, Equatable {
    public var name: String
    /// The server (`address`), or the first seed of a cluster, or the first sentinel.
    public var address: SocketAddressSpec
    /// How the server that holds a key is found.
    public var topology: RedisTopology = .single
    /// TLS to every server of the deployment (sentinels included); nil: plaintext.
    public var tls: UpstreamTLS?
    /// For `AUTH username password` (Redis 6 ACLs); nil sends `AUTH password` alone.
    public var username: String?
    /// Never logged. Usually `${REDIS_PASSWORD}` or `password_file`.
    public var password: String?
    public var passwordFile: String?
    /// `SELECT`ed after connecting. Default 0.
    public var database: Int = 0
    /// Default 100 ms.
    public var connectTimeout: Duration = .milliseconds(100)
    /// Longest a request waits for Redis's answer; then the route's failure mode decides.
    /// Default 50 ms.
    public var commandTimeout: Duration = .milliseconds(50)
    /// Prepended to every bucket key, before the `{hash tag}`. Default `moongate:rl:`.
    public var keyPrefix: String = "moongate:rl:"
    /// Consecutive failures (refused, reset, timed out) after which the circuit opens: requests
    /// stop waiting on Redis and follow their failure mode at once. Default 3.
    public var circuitFailures: Int = 3
    /// How long the circuit stays open before one probe; doubles on each failed probe up to
    /// `circuitMaxOpen`. Defaults 250 ms and 5 s.
    public var circuitOpen: Duration = .milliseconds(250)
    public var circuitMaxOpen: Duration = .seconds(5)

    public init(name: String, address: SocketAddressSpec) {
        self.name = name
        self.address = address
    }
}

/// How a Redis deployment is found.
public enum RedisTopology: Sendable, Equatable {
    /// One server, at `address`.
    case single
    /// A Redis Cluster: the slot map is read (`CLUSTER SLOTS`) from these seeds or any node
    /// learnt since; `MOVED` and `ASK` are followed.
    case cluster(seeds: [SocketAddressSpec])
    /// A primary named by Sentinel (`SENTINEL get-master-addr-by-name master`), asked of these
    /// sentinels in turn, and asked again when the primary fails or every `recheck`.
    case sentinel(RedisSentinel)
}

/// Where Sentinel is asked, and with what credentials (a sentinel's own, often none).
public struct RedisSentinel: Sendable, Equatable {
    public var addresses: [SocketAddressSpec]
    public var master: String
    public var username: String?
    public var password: String?
    /// How often a worker asks again while the primary answers. Default 1 s.
    public var recheck: Duration = .seconds(1)

    public init(addresses: [SocketAddressSpec], master: String) {
        self.addresses = addresses
        self.master = master
    }
}

/// How scripts' token buckets are kept.
public struct RateLimitConfig: Sendable, Equatable {
    /// The store `redis_bucket.take` uses when a call names none: `local`, or a Redis server's
    /// name. Default: the only Redis server if exactly one is configured, else `local`.
    public var defaultStore: String = "local"
    /// Buckets the local store holds at most (a fixed table: 16 bytes each, touched as used).
    /// Idle buckets are reused once refilled. Default 1,048,576.
    public var localKeys: Int = 1 << 20

    public init() {}
}

/// What a rate-limit check does when its Redis cannot answer in time.
public enum RateLimitFailure: String, Sendable, Equatable {
    /// Let the request through (and log and count it). The default, as Kong and the anchor do.
    case open
    /// Refuse it with `429`.
    case closed
}
