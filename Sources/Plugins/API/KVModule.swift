import CLuaRuntime
import NIOConcurrencyHelpers
import Scripting

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

    private let stripes: [NIOLockedValueBox<[String: Entry]>]
    private let maxKeysPerStripe: Int
    private let clock: any ScriptClock

    public static let maxKeyBytes = 1024
    public static let maxValueBytes = 64 * 1024

    public init(maxKeys: Int = 100_000, clock: any ScriptClock = SystemClock()) {
        stripes = (0..<64).map { _ in NIOLockedValueBox([:]) }
        maxKeysPerStripe = max(1, maxKeys / 64)
        self.clock = clock
    }

    private func stripe(_ key: String) -> NIOLockedValueBox<[String: Entry]> {
        var hasher = Hasher()
        hasher.combine(key)
        return stripes[Int(UInt(bitPattern: hasher.finalize()) % 64)]
    }

    public func get(_ key: String) -> [UInt8]? {
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
    public func set(_ key: String, _ value: [UInt8], ttl: Double?) -> Bool {
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

    public func delete(_ key: String) {
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
public struct KVModule: LuaModule {
    public let name = "kv"
    let store: MemoryKV

    public init(store: MemoryKV) {
        self.store = store
    }

    static let registryKey = "moongate.kv"

    public func register(_ L: OpaquePointer) {
        // The program holding this module outlives its states: an unretained pointer is safe.
        lua_pushlightuserdata(L, Unmanaged.passUnretained(store).toOpaque())
        lua_setfield(L, mg_registry_index(), Self.registryKey)
        Lua.setFunction(L, "get") { L in kvGet(L!) }
        Lua.setFunction(L, "set") { L in kvSet(L!) }
        Lua.setFunction(L, "delete") { L in kvDelete(L!) }
    }
}

private func kvStore(_ L: OpaquePointer) -> MemoryKV {
    lua_getfield(L, mg_registry_index(), KVModule.registryKey)
    defer { mg_pop(L, 1) }
    return Unmanaged<MemoryKV>.fromOpaque(lua_touserdata(L, -1)!).takeUnretainedValue()
}

private func kvKey(_ L: OpaquePointer) -> String? {
    guard let key = Lua.string(L, 1), !key.isEmpty, key.utf8.count <= MemoryKV.maxKeyBytes else { return nil }
    return (Lua.callerPlugin(L) ?? "scripts") + "\u{0}" + key
}

private func kvGet(_ L: OpaquePointer) -> Int32 {
    guard let key = kvKey(L) else { return Lua.raise(L, "kv.get(key): key is a string of 1 to 1024 bytes") }
    guard let value = kvStore(L).get(key) else {
        lua_pushnil(L)
        return 1
    }
    guard Lua.memoryLeft(L) > value.count + 64 else { return Lua.raise(L, "kv.get: not enough memory left in the budget") }
    value.withUnsafeBytes { Lua.push(L, bytes: $0) }
    return 1
}

private func kvSet(_ L: OpaquePointer) -> Int32 {
    guard let key = kvKey(L) else { return Lua.raise(L, "kv.set(key, value, [ttl]): key is a string of 1 to 1024 bytes") }
    guard let value = Lua.bytes(L, 2), value.count <= MemoryKV.maxValueBytes else {
        return Lua.raise(L, "kv.set(key, value, [ttl]): value is a string of at most 64 KiB")
    }
    var ttl: Double?
    if !Lua.isNoneOrNil(L, 3) {
        let t = lua_type(L, 3) == LUA_TNUMBER ? lua_tonumberx(L, 3, nil) : -1
        guard t > 0, t <= 365 * 86400 else { return Lua.raise(L, "kv.set: ttl is a number of seconds, more than 0 and at most a year") }
        ttl = t
    }
    if kvStore(L).set(key, Array(value), ttl: ttl) {
        lua_pushboolean(L, 1)
        return 1
    }
    lua_pushnil(L)
    Lua.push(L, "full")
    return 2
}

private func kvDelete(_ L: OpaquePointer) -> Int32 {
    guard let key = kvKey(L) else { return Lua.raise(L, "kv.delete(key): key is a string of 1 to 1024 bytes") }
    kvStore(L).delete(key)
    return 0
}
