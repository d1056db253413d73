/// A Redis server that scripts' rate-limit buckets (`redis_bucket.take(key, {store = name})`)
/// may live in. Each worker keeps one pipelined connection to it.
public struct RedisServer: Sendable, Equatable {
    public var name: String
    public var address: SocketAddressSpec
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
