import CLuaRuntime
import Logging
import NIOConcurrencyHelpers
import Redis
import Scripting
import Synchronization

/// The gateway's embedded key-value store: strings with a time to live, shared by every event
/// loop of the process (a session made on one loop is read on another), kept across reloads.
///
/// Why locks here, against the rule for the request path: the store must be exact across
/// loops, and values are variable-length, which the lock-free bucket table cannot hold. The
/// 64 stripes keep a critical section to one dictionary operation (about 100 ns), so loops
/// rarely meet; only requests whose scripts call `kv` pay it. With Redis configured, the
/// store a deployment shares across gateways is Redis (see `kv.store` in docs/plugins.md).
public final class MemoryKV: Sendable {
    struct Entry {
        var value: [UInt8]
        /// Script-clock seconds; .infinity for no expiry.
        var expires: Double
    }

    private let stripes: [NIOLockedValueBox<[[UInt8]: Entry]>]
    private let maxKeysPerStripe: Int
    private let clock: any ScriptClock

    public static let maxKeyBytes = 1024
    public static let maxValueBytes = 64 * 1024

    public init(maxKeys: Int = 100_000, clock: any ScriptClock = SystemClock()) {
        stripes = (0..<64).map { _ in NIOLockedValueBox([:]) }
        maxKeysPerStripe = max(1, maxKeys / 64)
        self.clock = clock
    }

    private func stripe(_ key: [UInt8]) -> NIOLockedValueBox<[[UInt8]: Entry]> {
        var hasher = Hasher()
        hasher.combine(key)
        return stripes[Int(UInt(bitPattern: hasher.finalize()) % 64)]
    }

    public func get(_ key: [UInt8]) -> [UInt8]? {
        let now = clock.now()
        return stripe(key).withLockedValue { table in
            guard let entry = table[key] else { return nil }
            if entry.expires <= now {
                table[key] = nil
                return nil
            }
            return entry.value
        }
    }

    /// False when the store is full of live keys.
    @discardableResult
    public func set(_ key: [UInt8], _ value: [UInt8], ttl: Double?) -> Bool {
        let now = clock.now()
        let expires = ttl.map { now + $0 } ?? .infinity
        let limit = maxKeysPerStripe
        return stripe(key).withLockedValue { table in
            if table[key] == nil, table.count >= limit {
                table = table.filter { $0.value.expires > now }
                if table.count >= limit { return false }
            }
            table[key] = Entry(value: value, expires: expires)
            return true
        }
    }

    public func delete(_ key: [UInt8]) {
        stripe(key).withLockedValue { table in table[key] = nil }
    }

    /// Empties the store (the harness between tests).
    public func clear() {
        for s in stripes { s.withLockedValue { $0.removeAll() } }
    }
}

/// `kv`: `kv.get(key)`, `kv.set(key, value, [ttl])`, `kv.delete(key)`. Keys are namespaced per
/// plugin (the calling plugin's name; user scripts share the namespace `scripts`), so two
/// plugins cannot read or clobber each other's keys.
///
/// With a Redis store (`kv.store`), `get` waits for Redis's answer (so only in the access
/// phase, like `redis_bucket`) and answers `nil, reason` when Redis cannot; `set` and
/// `delete` are sent on the event loop's connection without waiting (in any phase: a
/// session is written when the response is seen), and a failure is logged.
public struct KVModule: LuaModule {
    public let name = "kv"
    let context: KVContext

    public init(store: MemoryKV, redis: (sender: any RedisSender, server: Int, prefix: String)? = nil, logger: Logger = Logger(label: "moongate.kv")) {
        context = KVContext(memory: store, redis: redis.map { RedisKV(sender: $0.sender, server: $0.server, prefix: Array($0.prefix.utf8)) }, logger: logger)
    }

    public func register(_ L: OpaquePointer) {
        // The program holding this module outlives its states: an unretained pointer is safe.
        Lua.setFunction(L, "get", context: context) { L in kvGet(L!) }
        Lua.setFunction(L, "set", context: context) { L in kvSet(L!) }
        Lua.setFunction(L, "delete", context: context) { L in kvDelete(L!) }
    }
}

struct RedisKV: Sendable {
    let sender: any RedisSender
    let server: Int
    let prefix: [UInt8]
}

/// What every state's `kv` shares.
final class KVContext: Sendable {
    let memory: MemoryKV
    let redis: RedisKV?
    let logger: Logger
    /// Monotonic nanoseconds of the last failure logged (one line a second at most); far in
    /// the past at first, so the first failure is logged.
    private let lastLogged = Atomic<Int64>(-1_000_000_000_000)
    private let unlogged = Atomic<Int>(0)

    init(memory: MemoryKV, redis: RedisKV?, logger: Logger) {
        self.memory = memory
        self.redis = redis
        self.logger = logger
    }

    func logFailure(_ what: String, _ error: String) {
        // A monotonic clock, not the scripts' clock: this throttles logs.
        let now = Int64(clamping: mg_now_ns())
        let last = lastLogged.load(ordering: .relaxed)
        guard now - last >= 1_000_000_000, lastLogged.compareExchange(expected: last, desired: now, ordering: .relaxed).exchanged else {
            unlogged.add(1, ordering: .relaxed)
            return
        }
        let suppressed = unlogged.exchange(0, ordering: .relaxed)
        logger.warning("kv: Redis could not \(what)", metadata: ["error": "\(error)", "similar_since_last_line": "\(suppressed)"])
    }
}

private func kvContext(_ L: OpaquePointer) -> KVContext { Lua.functionContext(L, as: KVContext.self) }

/// The key argument, checked; nil when it is not a string of 1 to 1024 bytes.
private func kvArgument(_ L: OpaquePointer) -> UnsafeRawBufferPointer? {
    guard let key = Lua.bytes(L, 1), !key.isEmpty, key.count <= MemoryKV.maxKeyBytes else { return nil }
    return key
}

private func namespace(_ L: OpaquePointer) -> String { Lua.callerPlugin(L) ?? "scripts" }

/// The memory store's key: the namespace and the key's bytes as given (keys are bytes, and
/// decoding them as text would make two invalid sequences one key), split by a NUL no name
/// holds.
private func memoryKey(_ L: OpaquePointer, _ key: UnsafeRawBufferPointer) -> [UInt8] {
    Array(namespace(L).utf8) + [0] + Array(key)
}

/// Redis's key: the prefix, the namespace, a colon, the key (plugin names hold no colon).
private func redisKey(_ L: OpaquePointer, _ redis: RedisKV, _ key: UnsafeRawBufferPointer) -> [UInt8] {
    redis.prefix + Array(namespace(L).utf8) + [UInt8(ascii: ":")] + Array(key)
}

private final class KVWait {
    var result: Result<RedisReply, RedisError>?
    var resumer: ScriptResumer?
}

private func pushReply(_ L: OpaquePointer, _ result: Result<RedisReply, RedisError>) -> Int32 {
    switch result {
    case .success(.string(let value)):
        guard Lua.memoryLeft(L) > value.count + 64 else {
            lua_pushnil(L)
            Lua.push(L, "memory")
            return 2
        }
        value.withUnsafeBytes { Lua.push(L, bytes: $0) }
        return 1
    case .success(.null):
        lua_pushnil(L)
        return 1
    case .success(let other):
        lua_pushnil(L)
        if case .error(let message) = other { Lua.push(L, "redis: " + String(message.prefix(200))) } else { Lua.push(L, "redis: unexpected reply") }
        return 2
    case .failure(let error):
        lua_pushnil(L)
        Lua.push(L, error.code)
        return 2
    }
}

private func kvGet(_ L: OpaquePointer) -> Int32 {
    guard let key = kvArgument(L) else { return Lua.raise(L, "kv.get(key): key is a string of 1 to 1024 bytes") }
    let context = kvContext(L)
    guard let redis = context.redis else {
        guard let value = context.memory.get(memoryKey(L, key)) else {
            lua_pushnil(L)
            return 1
        }
        guard Lua.memoryLeft(L) > value.count + 64 else { return Lua.raise(L, "kv.get: not enough memory left in the budget") }
        value.withUnsafeBytes { Lua.push(L, bytes: $0) }
        return 1
    }
    guard let host = Lua.host(L), host.scriptCanWait else {
        return Lua.raise(L, "kv.get: with a Redis store, only in the access phase (set and delete work in any phase)")
    }
    var command = RedisCommand("GET")
    command.append(bytes: redisKey(L, redis, key))
    let wait = KVWait()
    redis.sender.send(server: redis.server, command) { result in
        guard let resumer = wait.resumer else {
            wait.result = result
            return
        }
        wait.resumer = nil
        if case .failure(let error) = result { context.logFailure("read a key", error.code) }
        resumer.resume { L in pushReply(L, result) }
    }
    if let result = wait.result {
        if case .failure(let error) = result { context.logFailure("read a key", error.code) }
        return pushReply(L, result)
    }
    wait.resumer = host.scriptSuspend()
    return Lua.yield(L)
}

private func kvSet(_ L: OpaquePointer) -> Int32 {
    guard let key = kvArgument(L) else { return Lua.raise(L, "kv.set(key, value, [ttl]): key is a string of 1 to 1024 bytes") }
    guard let value = Lua.bytes(L, 2), value.count <= MemoryKV.maxValueBytes else {
        return Lua.raise(L, "kv.set(key, value, [ttl]): value is a string of at most 64 KiB")
    }
    var ttl: Double?
    if !Lua.isNoneOrNil(L, 3) {
        let t = lua_type(L, 3) == LUA_TNUMBER ? lua_tonumberx(L, 3, nil) : -1
        guard t > 0, t <= 365 * 86400 else { return Lua.raise(L, "kv.set: ttl is a number of seconds, more than 0 and at most a year") }
        ttl = t
    }
    let context = kvContext(L)
    if let redis = context.redis {
        var command = RedisCommand("SET")
        command.append(bytes: redisKey(L, redis, key))
        command.append(bytes: value)
        if let ttl {
            command.append("PX")
            command.append(String(max(1, Int64((ttl * 1000).rounded(.up)))))
        }
        redis.sender.send(server: redis.server, command) { result in
            switch result {
            case .success(.error(let message)): context.logFailure("write a key", message)
            case .failure(let error): context.logFailure("write a key", error.code)
            case .success: break
            }
        }
        lua_pushboolean(L, 1)
        return 1
    }
    if context.memory.set(memoryKey(L, key), Array(value), ttl: ttl) {
        lua_pushboolean(L, 1)
        return 1
    }
    lua_pushnil(L)
    Lua.push(L, "full")
    return 2
}

private func kvDelete(_ L: OpaquePointer) -> Int32 {
    guard let key = kvArgument(L) else { return Lua.raise(L, "kv.delete(key): key is a string of 1 to 1024 bytes") }
    let context = kvContext(L)
    if let redis = context.redis {
        var command = RedisCommand("DEL")
        command.append(bytes: redisKey(L, redis, key))
        redis.sender.send(server: redis.server, command) { result in
            if case .failure(let error) = result { context.logFailure("delete a key", error.code) }
        }
        return 0
    }
    context.memory.delete(memoryKey(L, key))
    return 0
}
