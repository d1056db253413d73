import Config
import Logging
import Redis
import Scripting

/// Builds `redis_bucket` for the gateway and for `moongate test`.
public enum RateLimitModules {
    /// The gateway's module: `local` is the process's table (kept across reloads), `redis`
    /// the clients for `config.redis` (nil if it names no server).
    public static func make(
        config: GatewayConfig, local: LocalBuckets, redis: RedisBuckets?, counters: BucketCounters, logger: Logger
    ) -> [any LuaModule] {
        [BucketModule(local: local, redis: redis, config: config, counters: counters, logger: logger)]
    }

    /// The harness's module, on `clock`: Redis stores in memory, or in the real server at
    /// `redis` (`host:port`) with the fake clock passed to the script. `reset` empties every
    /// store (before each test).
    public static func forTests(
        config: GatewayConfig, clock: any ScriptClock, redis: SocketAddressSpec? = nil, logger: Logger = Logger(label: "moongate.test")
    ) throws(RedisError) -> (modules: [any LuaModule], reset: () -> Void) {
        let local = LocalBuckets(slots: 4096, clock: clock)
        if let redis {
            let store = try BlockingRedisBuckets(host: redis.host, port: redis.port, clock: clock)
            return ([BucketModule(local: local, redis: store, config: config, logger: logger)], {
                local.clear()
                store.clear()
            })
        }
        let store = MemoryRedisBuckets(servers: config.redis.count, clock: clock)
        return ([BucketModule(local: local, redis: store, config: config, logger: logger)], {
            local.clear()
            store.clear()
        })
    }
}
