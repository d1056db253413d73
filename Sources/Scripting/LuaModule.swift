import CLuaRuntime
import Config

/// A Lua function written in Swift. It must not call anything that raises a Lua error (it
/// reports errors with `Lua.raise` instead), and must not call back into Lua.
public typealias LuaFunction = @convention(c) (OpaquePointer?) -> Int32

/// An API module scripts use (`request`, `json`, `log`, ...). The runtime knows modules only
/// through this: each registers its functions into every state it creates.
public protocol LuaModule: Sendable {
    /// The global name scripts use.
    var name: String { get }
    /// Adds the module's functions to the table on top of the stack (see `Lua.setFunction`).
    func register(_ L: OpaquePointer)
}

/// Helpers for Swift-implemented Lua functions. None of them raises.
public enum Lua {
    static let raiseCode: Int32 = -1  // MG_RAISE
    static let yieldCode: Int32 = -2  // MG_YIELD

    /// Sets `name` in the table on top of the stack to the Swift function `f`.
    public static func setFunction(_ L: OpaquePointer, _ name: String, _ f: LuaFunction) {
        mg_push_swift_function(L, f)
        lua_setfield(L, -2, name)
    }

    /// Sets `name` to `f`, which reads `context` back with `Lua.functionContext(L)`: for a
    /// module's shared object (kept alive by the module, which outlives its states).
    public static func setFunction(_ L: OpaquePointer, _ name: String, context: AnyObject, _ f: LuaFunction) {
        mg_push_swift_function_with(L, f, Unmanaged.passUnretained(context).toOpaque())
        lua_setfield(L, -2, name)
    }

    /// The context `setFunction(_:_:context:_:)` gave the running Swift function.
    @inline(__always)
    public static func functionContext<T: AnyObject>(_ L: OpaquePointer, as type: T.Type) -> T {
        Unmanaged<T>.fromOpaque(mg_function_context(L)!).takeUnretainedValue()
    }

    /// `luaL_testudata` with a name known at compile time: a `String` argument would be
    /// copied into a C string on every call.
    @inline(__always)
    public static func testUserdata(_ L: OpaquePointer, _ index: Int32, _ metatable: StaticString) -> UnsafeMutableRawPointer? {
        luaL_testudata(L, index, UnsafeRawPointer(metatable.utf8Start).assumingMemoryBound(to: CChar.self))
    }

    /// Pushes a full userdata of `size` bytes, filled by `fill`, with the metatable
    /// `metatable` (made on first use: `__name` is `shownName`, and the metatable is hidden
    /// from scripts). For plain values only: no finalizer runs, so nothing in it may need one.
    public static func pushPlainUserdata(
        _ L: OpaquePointer, size: Int, metatable: StaticString, shownName: String, _ fill: (UnsafeMutableRawPointer) -> Void
    ) {
        fill(lua_newuserdatauv(L, size, 0)!)
        if luaL_newmetatable(L, UnsafeRawPointer(metatable.utf8Start).assumingMemoryBound(to: CChar.self)) != 0 {
            push(L, shownName)
            lua_setfield(L, -2, "__name")
            lua_pushboolean(L, 0)
            lua_setfield(L, -2, "__metatable")
        }
        lua_setmetatable(L, -2)
    }

    /// Ends a Swift function with a Lua error: `return Lua.raise(L, "request.x: ...")`.
    /// The script's `file:line` is prefixed, as `error()` would.
    public static func raise(_ L: OpaquePointer, _ message: String) -> Int32 {
        // Messages may quote what the script passed: bounded, so the push cannot fail.
        push(L, message.utf8.count <= maxMessageBytes ? message : String(decoding: message.utf8.prefix(maxMessageBytes), as: UTF8.self) + "…")
        return raiseCode
    }

    static let maxMessageBytes = 1024

    /// Ends a Swift function by suspending the script until the runtime resumes it (an API
    /// call that waits). The values the runtime pushes on resume are the call's results.
    public static func yield(_ L: OpaquePointer) -> Int32 {
        lua_settop(L, 0)
        lua_pushlightuserdata(L, mg_yield_sentinel())
        return yieldCode
    }

    public static func push(_ L: OpaquePointer, _ string: String) {
        var s = string
        s.withUTF8 { buffer in
            _ = buffer.withMemoryRebound(to: CChar.self) { lua_pushlstring(L, $0.baseAddress, $0.count) }
        }
    }

    /// Pushes `strings` as a Lua array (a sequence from 1).
    public static func push(_ L: OpaquePointer, strings: [String]) {
        lua_createtable(L, Int32(strings.count), 0)
        for (i, string) in strings.enumerated() {
            push(L, string)
            lua_rawseti(L, -2, lua_Integer(i + 1))
        }
    }

    /// Pushes a JSON value as Lua values (objects and arrays as tables; null as nil). For
    /// values the runtime built (a plugin's conf): it allocates outside any script's budget.
    public static func push(_ L: OpaquePointer, json: JSONValue) {
        switch json {
        case .null: lua_pushnil(L)
        case .bool(let b): lua_pushboolean(L, b ? 1 : 0)
        case .int(let i): lua_pushinteger(L, lua_Integer(i))
        case .double(let d): lua_pushnumber(L, d)
        case .string(let s): push(L, s)
        case .array(let items):
            lua_createtable(L, Int32(items.count), 0)
            for (i, item) in items.enumerated() {
                push(L, json: item)
                lua_rawseti(L, -2, lua_Integer(i + 1))
            }
        case .object(let members):
            lua_createtable(L, 0, Int32(members.count))
            for (key, value) in members where value != .null {
                push(L, key)
                push(L, json: value)
                lua_rawset(L, -3)
            }
        }
    }

    public static func push(_ L: OpaquePointer, bytes: UnsafeRawBufferPointer) {
        lua_pushlstring(L, bytes.baseAddress?.assumingMemoryBound(to: CChar.self), bytes.count)
    }

    /// The string at `index`, only if it is a string (numbers are not converted).
    public static func string(_ L: OpaquePointer, _ index: Int32) -> String? {
        guard lua_type(L, index) == LUA_TSTRING else { return nil }
        var length = 0
        let p = lua_tolstring(L, index, &length)!
        return String(decoding: UnsafeRawBufferPointer(start: p, count: length), as: UTF8.self)
    }

    /// The bytes of the string at `index`, valid while the value stays on the stack.
    public static func bytes(_ L: OpaquePointer, _ index: Int32) -> UnsafeRawBufferPointer? {
        guard lua_type(L, index) == LUA_TSTRING else { return nil }
        var length = 0
        let p = lua_tolstring(L, index, &length)!
        return UnsafeRawBufferPointer(start: p, count: length)
    }

    /// The integer at `index` (a float with an integral value counts), else nil.
    public static func integer(_ L: OpaquePointer, _ index: Int32) -> Int? {
        guard lua_type(L, index) == LUA_TNUMBER else { return nil }
        var ok: Int32 = 0
        let v = lua_tointegerx(L, index, &ok)
        return ok != 0 ? Int(v) : nil
    }

    /// Pushes `t[name]` of the table at `index` without metamethods: a script's table may
    /// carry an `__index` function, which must not run (and maybe raise) inside Swift.
    /// Returns the value's type.
    @discardableResult
    public static func rawField(_ L: OpaquePointer, _ index: Int32, _ name: String) -> Int32 {
        let table = lua_absindex(L, index)
        push(L, name)
        return lua_rawget(L, table)
    }

    public static func isNoneOrNil(_ L: OpaquePointer, _ index: Int32) -> Bool {
        lua_type(L, index) <= LUA_TNIL
    }

    /// The type name of the value at `index`, for error messages.
    public static func typeName(_ L: OpaquePointer, _ index: Int32) -> String {
        String(cString: lua_typename(L, lua_type(L, index)))
    }

    /// Bytes the running script may still allocate, from a Swift function (or a resume's
    /// push): check it before pushing something large.
    public static func memoryLeft(_ L: OpaquePointer) -> Int {
        let b = mg_budget_of(L).pointee
        if b.limit == UInt.max { return Int.max }
        return Int(b.limit) - Int(b.slack) - Int(b.used)
    }

    /// The request the running script serves, as passed to `LuaState.run`.
    @inline(__always)
    public static func current(_ L: OpaquePointer) -> UnsafeMutableRawPointer? {
        mg_budget_of(L).pointee.current
    }

    /// The runtime's clock as scripts see it (`now()`): the harness's fake one under test.
    public static func now(_ L: OpaquePointer) -> Double {
        owner(L).program.clock.now()
    }

    /// The interpreter `L` (or a thread of it) belongs to.
    static func owner(_ L: OpaquePointer) -> LuaInterpreter {
        Unmanaged<LuaInterpreter>.fromOpaque(mg_budget_of(L).pointee.owner).takeUnretainedValue()
    }

    /// The plugin whose code calls the running Swift function (nil for a user script):
    /// what namespaces a plugin's keys (`kv`).
    public static func callerPlugin(_ L: OpaquePointer) -> String? {
        var ar = lua_Debug()
        var level: Int32 = 1
        while lua_getstack(L, level, &ar) != 0 {
            lua_getinfo(L, "S", &ar)
            if let source = ar.source, source.pointee == UInt8(ascii: "@") {
                let path = String(cString: source + 1)
                for chain in owner(L).program.chains {
                    for link in chain.links where link.path == path { return link.plugin }
                }
                return nil
            }
            level += 1
        }
        return nil
    }

    /// `file:line` of the script calling the running Swift function.
    public static func callerLocation(_ L: OpaquePointer) -> String? {
        var ar = lua_Debug()
        var level: Int32 = 1
        while lua_getstack(L, level, &ar) != 0 {
            lua_getinfo(L, "Sl", &ar)
            if ar.currentline > 0 { return "\(String(cString: mg_short_src(&ar))):\(ar.currentline)" }
            level += 1
        }
        return nil
    }
}
