import CLuaRuntime
import Config
import Logging
import Redis
import Scripting
import Synchronization
import Telemetry

/// `redis_bucket`: token buckets for scripts.
///
///     local allowed, remaining, retry_after, err = redis_bucket.take(key, {capacity = 100, rate = 10})
///     redis_bucket.limit(key, {capacity = 100, rate = 10})  -- headers, and 429 when empty
///
/// `store` picks `local` (the gateway's memory, exact across its event loops) or a Redis
/// server from the config (exact across gateways); the default is `rate_limit.default_store`.
/// When Redis cannot answer within its command timeout, the route's `rate_limit_failure`
/// (or the call's `failure`) decides: `open` allows, `closed` refuses; `err` says why.
public struct BucketModule: LuaModule {
    public let name = "redis_bucket"
    let context: BucketContext

    public init(
        local: LocalBuckets, redis: (any RedisBucketStore)?, config: GatewayConfig, counters: BucketCounters = BucketCounters(),
        logger: Logger
    ) {
        context = BucketContext(local: local, redis: redis, config: config, counters: counters, logger: logger)
    }

    public func register(_ L: OpaquePointer) {
        // The program holding this module outlives its states: an unretained pointer is safe.
        Lua.setFunction(L, "take", context: context) { L in BucketModule.call(L!, limit: false) }
        Lua.setFunction(L, "limit", context: context) { L in BucketModule.call(L!, limit: true) }
        Lua.setFunction(L, "limiter", context: context) { L in BucketModule.limiter(L!) }
    }

    static let metatable: StaticString = "moongate.limiter"

    /// `redis_bucket.limiter(options)`: the options checked once (a plugin's `prepare`), for
    /// `take` and `limit` to use in place of the table. Reading five fields of a table on
    /// every call was a third of `limit`'s cost.
    static func limiter(_ L: OpaquePointer) -> Int32 {
        let context = context(L)
        let options: Options
        switch parse(L, context, "redis_bucket.limiter", at: 1) {
        case .success(let o): options = o
        case .failure(let message): return Lua.raise(L, message.text)
        }
        Lua.pushPlainUserdata(L, size: MemoryLayout<Options>.stride, metatable: metatable, shownName: "redis_bucket.limiter") { raw in
            raw.storeBytes(of: options, as: Options.self)
        }
        return 1
    }

    /// Only inside the module's own functions (the context is their upvalue).
    static func context(_ L: OpaquePointer) -> BucketContext { Lua.functionContext(L, as: BucketContext.self) }

    /// Longest key accepted (Redis keys can be longer; a bucket per huge key is a mistake).
    static let maxKeyBytes = 1024

    struct Request {
        var store: Int  // -1: local
        var capacity: Double
        var rate: Double
        var cost: Double
        var failOpen: Bool
    }

    /// A call's options as checked: a `Request` but for the failure mode, which is the
    /// route's unless the options name one.
    struct Options {
        var store: Int
        var capacity: Double
        var rate: Double
        var cost: Double
        /// nil: the route's `rate_limit_failure`.
        var failOpen: Bool?

        func request(_ L: OpaquePointer, _ context: BucketContext) -> Request {
            var open = true
            if let failOpen {
                open = failOpen
            } else if let host = Lua.host(L), let route = host.scriptRouteIndex, route < context.failure.count {
                open = context.failure[route] == .open
            }
            return Request(store: store, capacity: capacity, rate: rate, cost: cost, failOpen: open)
        }
    }

    static func call(_ L: OpaquePointer, limit: Bool) -> Int32 {
        let fn = limit ? "redis_bucket.limit" : "redis_bucket.take"
        let context = context(L)
        guard let key = Lua.bytes(L, 1), !key.isEmpty else {
            return Lua.raise(L, "\(fn)(key, options): the key must be a non-empty string")
        }
        guard key.count <= maxKeyBytes else { return Lua.raise(L, "\(fn): the key is longer than \(maxKeyBytes) bytes") }
        let request: Request
        if let raw = Lua.testUserdata(L, 2, metatable) {
            request = raw.load(as: Options.self).request(L, context)
        } else {
            switch parse(L, context, fn, at: 2) {
            case .success(let o): request = o.request(L, context)
            case .failure(let message): return Lua.raise(L, message.text)
            }
        }
        if request.store < 0 {
            let d = context.local.take(key, capacity: request.capacity, rate: request.rate, cost: request.cost)
            return finish(L, context, request, .success(d), limit: limit, host: limit ? Lua.host(L) : nil)
        }
        guard let redis = context.redis else { return Lua.raise(L, "\(fn): Redis stores are not available here") }
        guard let host = Lua.host(L), host.scriptCanWait else {
            return Lua.raise(L, "\(fn): a Redis store can only be used in the access phase")
        }
        let wait = Wait()
        redis.take(server: request.store, key: key, capacity: request.capacity, rate: request.rate, cost: request.cost) { result in
            guard let resumer = wait.resumer else {
                wait.result = result
                return
            }
            wait.resumer = nil
            // Later, on the loop: headers and a refusal go through the host, the rest is
            // pushed as the call's results.
            let outcome = context.outcome(result, request, host: host)
            if limit {
                if let answer = outcome.answer {
                    resumer.answer(answer)
                    return
                }
                outcome.addHeaders(to: host)
            }
            resumer.resume { L in outcome.push(L) }
        }
        if let result = wait.result {
            return finish(L, context, request, result, limit: limit, host: host)
        }
        wait.resumer = host.scriptSuspend()
        return Lua.yield(L)
    }

    final class Wait {
        var result: Result<BucketDecision, RedisError>?
        var resumer: ScriptResumer?
    }

    private static func finish(
        _ L: OpaquePointer, _ context: BucketContext, _ request: Request, _ result: Result<BucketDecision, RedisError>,
        limit: Bool, host: ScriptHost?
    ) -> Int32 {
        let outcome = context.outcome(result, request, host: host)
        if limit, let host {
            if let answer = outcome.answer {
                host.scriptAnswer(answer)
                return Lua.yield(L)
            }
            outcome.addHeaders(to: host)
        }
        return outcome.push(L)
    }

    struct Message: Error {
        var text: String
    }

    private static func parse(_ L: OpaquePointer, _ context: BucketContext, _ fn: String, at index: Int32) -> Result<Options, Message> {
        guard lua_type(L, index) == LUA_TTABLE else {
            return .failure(Message(text: "\(fn)(\(index == 2 ? "key, " : "")options): options must be a table with capacity and rate\(index == 2 ? " or redis_bucket.limiter(options)" : "")"))
        }
        func number(_ field: String) -> Double?? {
            let type = Lua.rawField(L, index, field)
            defer { mg_pop(L, 1) }
            if type == LUA_TNIL { return .some(nil) }
            guard type == LUA_TNUMBER else { return nil }
            return .some(lua_tonumberx(L, -1, nil))
        }
        guard let c = number("capacity"), let capacity = c, capacity > 0, capacity <= 1e15 else {
            return .failure(Message(text: "\(fn): options.capacity must be a number greater than 0"))
        }
        guard let r = number("rate"), let rate = r, rate > 0, rate <= 1e9 else {
            return .failure(Message(text: "\(fn): options.rate (tokens per second) must be a number from 0 (exclusive) to 1e9"))
        }
        guard let k = number("cost"), (k ?? 1) >= 0, (k ?? 1) <= capacity else {
            return .failure(Message(text: "\(fn): options.cost must be a number from 0 to the capacity"))
        }
        var store = context.defaultStore
        switch Lua.rawField(L, index, "store") {
        case LUA_TNIL: break
        case LUA_TSTRING:
            let bytes = Lua.bytes(L, -1)!
            if let found = context.storeIndex(bytes) {
                store = found
            } else {
                let name = String(decoding: bytes.prefix(64), as: UTF8.self)
                mg_pop(L, 1)
                return .failure(Message(text: "\(fn): unknown store \"\(name)\" (local or a server under redis in the config)"))
            }
        default:
            mg_pop(L, 1)
            return .failure(Message(text: "\(fn): options.store must be a string"))
        }
        mg_pop(L, 1)
        var failOpen: Bool?
        switch Lua.rawField(L, index, "failure") {
        case LUA_TNIL: break
        case LUA_TSTRING where Lua.string(L, -1) == "open": failOpen = true
        case LUA_TSTRING where Lua.string(L, -1) == "closed": failOpen = false
        default:
            mg_pop(L, 1)
            return .failure(Message(text: "\(fn): options.failure must be \"open\" or \"closed\""))
        }
        mg_pop(L, 1)
        return .success(Options(store: store, capacity: capacity, rate: rate, cost: k ?? 1, failOpen: failOpen))
    }
}

/// One call's result as the script and the client see it.
struct BucketOutcome {
    var allowed: Bool
    var remaining: Int
    var retryAfter: Double
    var resetAfter: Double
    var capacity: Double
    /// Why the store did not answer (`redis_timeout`, ...), if it did not.
    var error: String?

    /// `allowed, remaining, retry_after, err`.
    func push(_ L: OpaquePointer) -> Int32 {
        lua_pushboolean(L, allowed ? 1 : 0)
        lua_pushinteger(L, lua_Integer(remaining))
        lua_pushnumber(L, retryAfter)
        if let error { Lua.push(L, error) } else { lua_pushnil(L) }
        return 4
    }

    /// For `limit`: the `429` a refusal answers with.
    var answer: ScriptAnswer? {
        guard !allowed else { return nil }
        var headers = rateLimitHeaders
        headers.append(("Retry-After", String(max(1, Int(retryAfter.rounded(.up))))))
        return ScriptAnswer(status: 429, message: error == nil ? "rate limited" : "rate limiter unavailable", headers: headers)
    }

    /// `RateLimit-Limit`, `-Remaining`, `-Reset` (seconds until full), when the store answered.
    var rateLimitHeaders: [(String, String)] {
        guard error == nil else { return [] }
        return [
            ("RateLimit-Limit", String(Int64(capacity))), ("RateLimit-Remaining", String(remaining)),
            ("RateLimit-Reset", String(Int64(resetAfter.rounded(.up)))),
        ]
    }

    func addHeaders(to host: ScriptHost) {
        guard error == nil else { return }
        _ = host.scriptAddResponseHeader("RateLimit-Limit", decimal: Int64(capacity))
        _ = host.scriptAddResponseHeader("RateLimit-Remaining", decimal: Int64(remaining))
        _ = host.scriptAddResponseHeader("RateLimit-Reset", decimal: Int64(resetAfter.rounded(.up)))
    }
}

/// What every state's `redis_bucket` shares: the stores, the routes' failure modes, counters.
final class BucketContext: Sendable {
    let local: LocalBuckets
    let redis: (any RedisBucketStore)?
    /// Redis server names, in config order (a store index is a position here).
    let servers: [[UInt8]]
    /// -1 for local.
    let defaultStore: Int
    let failure: [RateLimitFailure]
    let logger: Logger
    let counters: BucketCounters

    init(local: LocalBuckets, redis: (any RedisBucketStore)?, config: GatewayConfig, counters: BucketCounters, logger: Logger) {
        self.counters = counters
        self.local = local
        self.redis = redis
        self.servers = config.redis.map { Array($0.name.utf8) }
        self.defaultStore = config.redis.firstIndex { $0.name == config.rateLimit.defaultStore } ?? -1
        self.failure = config.routes.map(\.rateLimitFailure)
        self.logger = logger
    }

    static let localName: [UInt8] = Array("local".utf8)

    func storeIndex(_ name: UnsafeRawBufferPointer) -> Int? {
        if name.elementsEqual(Self.localName) { return -1 }
        return servers.firstIndex { $0.elementsEqual(name) }
    }

    func outcome(_ result: Result<BucketDecision, RedisError>, _ request: BucketModule.Request, host: ScriptHost?) -> BucketOutcome {
        switch result {
        case .success(let d):
            if let host { host.scriptMetrics?.rateLimit(route: host.scriptMetricRoute, d.allowed ? .allowed : .limited) }
            return BucketOutcome(
                allowed: d.allowed, remaining: d.remaining, retryAfter: d.retryAfter, resetAfter: d.resetAfter, capacity: request.capacity)
        case .failure(let error):
            if request.failOpen {
                counters.failOpen.add(1, ordering: .relaxed)
            } else {
                counters.failClosed.add(1, ordering: .relaxed)
            }
            if let host { host.scriptMetrics?.rateLimit(route: host.scriptMetricRoute, request.failOpen ? .failOpen : .failClosed) }
            logFailure(error, request)
            return BucketOutcome(
                allowed: request.failOpen, remaining: 0, retryAfter: request.failOpen ? 0 : 1, resetAfter: 0, capacity: request.capacity,
                error: error.code)
        }
    }

    private func logFailure(_ error: RedisError, _ request: BucketModule.Request) {
        let now = Int64(mg_now_ns())
        let c = counters
        let last = c.lastLogged.load(ordering: .relaxed)
        guard now - last >= 1_000_000_000, c.lastLogged.compareExchange(expected: last, desired: now, ordering: .relaxed).exchanged else {
            c.unlogged.add(1, ordering: .relaxed)
            return
        }
        let suppressed = c.unlogged.exchange(0, ordering: .relaxed)
        let server = request.store >= 0 && request.store < servers.count ? String(decoding: servers[request.store], as: UTF8.self) : "?"
        logger.warning(
            request.failOpen ? "rate limiter unavailable: letting requests through (fail open)" : "rate limiter unavailable: refusing requests (fail closed)",
            metadata: [
                "redis": "\(server)", "error": "\(error)", "similar_since_last_line": "\(suppressed)",
                "fail_open_total": "\(c.failOpen.load(ordering: .relaxed))", "fail_closed_total": "\(c.failClosed.load(ordering: .relaxed))",
            ])
    }
}

/// Rate-limit decisions made without the store (Redis could not answer), for the process's
/// life: kept by the gateway across reloads, for logs, tests and (later) metrics.
public final class BucketCounters: Sendable {
    let failOpen = Atomic<Int>(0)
    let failClosed = Atomic<Int>(0)
    /// When the last failure was logged (ns), so that an outage logs once a second, not per request.
    let lastLogged = Atomic<Int64>(0)
    let unlogged = Atomic<Int>(0)

    public init() {}

    /// Requests let through (`open`) and refused (`closed`) because the store did not answer.
    public var failures: (open: Int, closed: Int) {
        (failOpen.load(ordering: .relaxed), failClosed.load(ordering: .relaxed))
    }
}
