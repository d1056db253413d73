import CLuaRuntime
import Logging

/// The time scripts see through `now()`: the real clock in the gateway, a fake one in tests.
public protocol ScriptClock: Sendable {
    /// Seconds since the Unix epoch.
    func now() -> Double
    /// Nanoseconds that only move forward, for measuring intervals (token refill): the
    /// monotonic clock in the gateway, the fake time since the epoch in tests.
    func nanoseconds() -> Int64
}

/// The wall clock.
public struct SystemClock: ScriptClock {
    public init() {}

    public func now() -> Double {
        var ts = timespec()
        clock_gettime(CLOCK_REALTIME, &ts)
        return Double(ts.tv_sec) + Double(ts.tv_nsec) / 1e9
    }

    public func nanoseconds() -> Int64 { Int64(mg_now_ns()) }
}

/// `log`, `print` and `now`, which every state has.
enum BuiltinModules {
    /// Adds them to the table on top of the stack.
    static func register(_ L: OpaquePointer) {
        lua_createtable(L, 0, 4)
        Lua.setFunction(L, "debug", { L in BuiltinModules.log(L!, .debug) })
        Lua.setFunction(L, "info", { L in BuiltinModules.log(L!, .info) })
        Lua.setFunction(L, "warn", { L in BuiltinModules.log(L!, .warning) })
        Lua.setFunction(L, "error", { L in BuiltinModules.log(L!, .error) })
        Lua.setFunction(L, "field", { L in BuiltinModules.field(L!) })
        lua_setfield(L, -2, "log")
        Lua.setFunction(L, "print", { L in BuiltinModules.log(L!, .info) })
        Lua.setFunction(L, "now", { L in
            let L = L!
            lua_pushnumber(L, Lua.owner(L).program.clock.now())
            return 1
        })
    }

    /// Longest log line a script may write; the rest is cut.
    static let maxMessageBytes = 4096
    /// Log lines a script may write per request (a loop must not flood the log).
    static let maxLinesPerRequest = 100

    /// `log.field(name, value)`: adds `"name": "value"` to the request's access-log line.
    fileprivate static func field(_ L: OpaquePointer) -> Int32 {
        guard let name = Lua.string(L, 1), !name.isEmpty, name.utf8.count <= 64,
            name.utf8.allSatisfy({ ($0 >= 97 && $0 <= 122) || ($0 >= 48 && $0 <= 57) || $0 == 95 })
        else { return Lua.raise(L, "log.field(name, value): name is 1 to 64 of a-z, 0-9 and _") }
        let value: String
        if let s = Lua.string(L, 2) { value = s } else if let i = Lua.integer(L, 2) { value = String(i) } else if lua_type(L, 2) == LUA_TBOOLEAN {
            value = lua_toboolean(L, 2) != 0 ? "true" : "false"
        } else {
            return Lua.raise(L, "log.field: the value must be a string, an integer or a boolean")
        }
        guard value.utf8.count <= 1024 else { return Lua.raise(L, "log.field: the value is longer than 1024 bytes") }
        lua_pushboolean(L, Lua.host(L)?.scriptAddLogField(name, value) == true ? 1 : 0)
        return 1
    }

    fileprivate static func log(_ L: OpaquePointer, _ level: Logger.Level) -> Int32 {
        let interpreter = Lua.owner(L)
        let run = interpreter.active
        let lines: Int
        if let run {
            run.logLines += 1
            lines = run.logLines
        } else {
            interpreter.loadLogLines += 1
            lines = interpreter.loadLogLines
        }
        let host = run?.host
        if lines > maxLinesPerRequest {
            if lines == maxLinesPerRequest + 1 {
                let location = Lua.callerLocation(L)
                let message = "more than \(maxLinesPerRequest) log lines in one request: the rest are dropped"
                if let host { host.scriptLog(.warning, message, location: location) } else { interpreter.program.logger.warning("\(message)") }
            }
            return 0
        }
        var message = ""
        let count = lua_gettop(L)
        for i in stride(from: Int32(1), through: count, by: 1) {
            if i > 1 { message += " " }
            switch lua_type(L, i) {
            case LUA_TSTRING: message += Lua.string(L, i)!
            case LUA_TNUMBER:
                if let n = Lua.integer(L, i) { message += String(n) } else { message += String(lua_tonumberx(L, i, nil)) }
            case LUA_TBOOLEAN: message += lua_toboolean(L, i) != 0 ? "true" : "false"
            case LUA_TNIL: message += "nil"
            default: message += "<\(Lua.typeName(L, i))>"
            }
            if message.utf8.count > maxMessageBytes { break }
        }
        if message.utf8.count > maxMessageBytes {
            message = String(decoding: message.utf8.prefix(maxMessageBytes), as: UTF8.self) + "…"
        }
        let location = Lua.callerLocation(L)
        if let host {
            host.scriptLog(level, message, location: location)
        } else {
            interpreter.program.logger.log(level: level, "\(message)", metadata: location.map { ["script": "\($0)"] })
        }
        return 0
    }
}

#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif
