import CLuaRuntime
import Scripting

/// `application/x-www-form-urlencoded` query strings, for `request.query_arg(s)` and
/// `request.set_query{...}`.
enum QueryString {
    /// Arguments read at most (as nginx's `ngx.req.get_uri_args` default).
    static let maxArguments = 100

    /// Calls `body` with each decoded `key`, `value` (`a` alone gives `""`) until it returns false.
    static func forEach(_ query: UnsafeRawBufferPointer, _ body: ([UInt8], [UInt8]) -> Bool) {
        var start = 0
        while start <= query.count {
            var end = start
            while end < query.count, query[end] != UInt8(ascii: "&") { end += 1 }
            if end > start {
                var eq = start
                while eq < end, query[eq] != UInt8(ascii: "=") { eq += 1 }
                let key = decode(query, start, eq)
                let value = eq < end ? decode(query, eq + 1, end) : []
                if !body(key, value) { return }
            }
            start = end + 1
        }
    }

    static func decode(_ p: UnsafeRawBufferPointer, _ from: Int, _ to: Int) -> [UInt8] {
        var out: [UInt8] = []
        out.reserveCapacity(to - from)
        var i = from
        while i < to {
            let c = p[i]
            if c == UInt8(ascii: "+") {
                out.append(UInt8(ascii: " "))
            } else if c == UInt8(ascii: "%"), i + 2 < to, let hi = hex(p[i + 1]), let lo = hex(p[i + 2]) {
                out.append(hi << 4 | lo)
                i += 2
            } else {
                out.append(c)
            }
            i += 1
        }
        return out
    }

    private static func hex(_ c: UInt8) -> UInt8? {
        switch c {
        case 48...57: return c - 48
        case 65...70: return c - 55
        case 97...102: return c - 87
        default: return nil
        }
    }

    /// Encodes the table at `index` (keys sorted, so the result is stable); nil if a key or
    /// value has the wrong type.
    static func encode(_ L: OpaquePointer, _ index: Int32) -> [UInt8]? {
        var pairs: [([UInt8], [UInt8])] = []
        lua_pushnil(L)
        while lua_next(L, index) != 0 {
            guard let key = Lua.bytes(L, -2).map(Array.init) else {
                lua_settop(L, index)
                return nil
            }
            if lua_type(L, -1) == LUA_TTABLE {
                for i in 0..<min(Int(lua_rawlen(L, -1)), maxArguments) {
                    lua_rawgeti(L, -1, lua_Integer(i + 1))
                    guard let value = scalar(L, -1) else {
                        lua_settop(L, index)
                        return nil
                    }
                    pairs.append((key, value))
                    mg_pop(L, 1)
                }
            } else {
                guard let value = scalar(L, -1) else {
                    lua_settop(L, index)
                    return nil
                }
                pairs.append((key, value))
            }
            mg_pop(L, 1)
        }
        pairs.sort { $0.0.lexicographicallyPrecedes($1.0) }
        var out: [UInt8] = []
        for (i, (key, value)) in pairs.enumerated() {
            if i > 0 { out.append(UInt8(ascii: "&")) }
            escape(key, into: &out)
            out.append(UInt8(ascii: "="))
            escape(value, into: &out)
        }
        return out
    }

    private static func scalar(_ L: OpaquePointer, _ index: Int32) -> [UInt8]? {
        switch lua_type(L, index) {
        case LUA_TSTRING: return Array(Lua.bytes(L, index)!)
        case LUA_TNUMBER:
            if let n = Lua.integer(L, index) { return Array(String(n).utf8) }
            return Array(String(lua_tonumberx(L, index, nil)).utf8)
        case LUA_TBOOLEAN: return Array((lua_toboolean(L, index) != 0 ? "true" : "false").utf8)
        default: return nil
        }
    }

    /// Percent-encodes all but RFC 3986's unreserved characters.
    static func escape(_ bytes: [UInt8], into out: inout [UInt8]) {
        let digits = Array("0123456789ABCDEF".utf8)
        for c in bytes {
            switch c {
            case 48...57, 65...90, 97...122, UInt8(ascii: "-"), UInt8(ascii: "."), UInt8(ascii: "_"), UInt8(ascii: "~"):
                out.append(c)
            default:
                out.append(UInt8(ascii: "%"))
                out.append(digits[Int(c >> 4)])
                out.append(digits[Int(c & 15)])
            }
        }
    }
}

/// Checks a path or query a script sets, so that a script cannot split or smuggle a request.
enum TargetCheck {
    static func path(_ p: UnsafeRawBufferPointer, limit: Int) -> String? {
        guard p.first == UInt8(ascii: "/") else { return "the path must start with /" }
        if p.count > limit { return "the path is longer than \(limit) bytes" }
        for c in p {
            if !HTTPBytes.isTargetChar(c) { return "the path has a space, control or non-ASCII character (percent-encode it)" }
            if c == UInt8(ascii: "?") || c == UInt8(ascii: "#") { return "the path must not contain ? or # (use request.set_query)" }
        }
        if PathSafety.hasDotSegment(p, ByteRange(0, p.count)) { return "dot segments are not allowed in the path" }
        return nil
    }

    static func query(_ q: UnsafeRawBufferPointer) -> String? {
        for c in q where !HTTPBytes.isTargetChar(c) || c == UInt8(ascii: "#") {
            return "the query has a space, control, non-ASCII character or # (percent-encode it)"
        }
        return nil
    }
}
