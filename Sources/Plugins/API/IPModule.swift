import CLuaRuntime
import Scripting

#if canImport(Glibc)
import Glibc
#endif

/// `ip`: addresses and CIDR ranges, parsed with `inet_pton` and compared as bytes.
/// `ip.cidrs(list)` parses a list once (a plugin's `prepare`); `ip.in_cidrs(address, list)`
/// takes that or a plain list of strings.
public struct IPModule: LuaModule {
    public let name = "ip"

    public init() {}

    static let metatable: StaticString = "moongate.cidrs"
    /// Ranges in one set at most.
    static let maxRanges = 10_000

    public func register(_ L: OpaquePointer) {
        Lua.setFunction(L, "cidrs") { L in
            let L = L!
            guard lua_type(L, 1) == LUA_TTABLE else { return Lua.raise(L, "ip.cidrs(list): a list of CIDR strings") }
            var ranges: [CIDR] = []
            let count = Int(lua_rawlen(L, 1))
            guard count <= IPModule.maxRanges else { return Lua.raise(L, "ip.cidrs: more than \(IPModule.maxRanges) ranges") }
            for i in 0..<count {
                lua_rawgeti(L, 1, lua_Integer(i + 1))
                defer { mg_pop(L, 1) }
                guard let text = Lua.string(L, -1), let range = CIDR(parsing: text) else {
                    let shown = Lua.string(L, -1).map { "\"\($0.prefix(64))\"" } ?? "a \(Lua.typeName(L, -1))"
                    return Lua.raise(L, "ip.cidrs: item \(i + 1) is not an address or CIDR range such as 10.0.0.0/8 or 2001:db8::/32 (got \(shown))")
                }
                ranges.append(range)
            }
            let size = MemoryLayout<Int>.stride + ranges.count * MemoryLayout<CIDR>.stride
            guard Lua.memoryLeft(L) > size + 64 else { return Lua.raise(L, "ip.cidrs: not enough memory left in the budget") }
            // Plain bytes: a count and the ranges.
            Lua.pushPlainUserdata(L, size: size, metatable: IPModule.metatable, shownName: "ip.cidrs") { raw in
                raw.storeBytes(of: ranges.count, as: Int.self)
                ranges.withUnsafeBytes { UnsafeMutableRawPointer(raw + MemoryLayout<Int>.stride).copyMemory(from: $0.baseAddress!, byteCount: $0.count) }
            }
            return 1
        }
        Lua.setFunction(L, "in_cidrs") { L in
            let L = L!
            guard let text = Lua.bytes(L, 1) else {
                if Lua.isNoneOrNil(L, 1) {
                    lua_pushboolean(L, 0)
                    return 1
                }
                return Lua.raise(L, "ip.in_cidrs(address, ranges): the address must be a string")
            }
            guard let address = Address(parsing: text) else {
                lua_pushboolean(L, 0)
                return 1
            }
            if let raw = Lua.testUserdata(L, 2, IPModule.metatable) {
                let count = raw.load(as: Int.self)
                let base = UnsafeRawPointer(raw + MemoryLayout<Int>.stride)
                for i in 0..<count where base.load(fromByteOffset: i * MemoryLayout<CIDR>.stride, as: CIDR.self).contains(address) {
                    lua_pushboolean(L, 1)
                    return 1
                }
                lua_pushboolean(L, 0)
                return 1
            }
            guard lua_type(L, 2) == LUA_TTABLE else { return Lua.raise(L, "ip.in_cidrs(address, ranges): ranges is a list of strings or ip.cidrs(list)") }
            let count = min(Int(lua_rawlen(L, 2)), IPModule.maxRanges)
            for i in 0..<count {
                lua_rawgeti(L, 2, lua_Integer(i + 1))
                let range = Lua.string(L, -1).flatMap(CIDR.init(parsing:))
                mg_pop(L, 1)
                guard let range else { return Lua.raise(L, "ip.in_cidrs: item \(i + 1) is not an address or CIDR range") }
                if range.contains(address) {
                    lua_pushboolean(L, 1)
                    return 1
                }
            }
            lua_pushboolean(L, 0)
            return 1
        }
        Lua.setFunction(L, "parse") { L in
            let L = L!
            guard let text = Lua.bytes(L, 1), let address = Address(parsing: text) else {
                lua_pushnil(L)
                return 1
            }
            Lua.push(L, address.text)
            lua_pushinteger(L, address.v4 ? 4 : 6)
            return 2
        }
    }
}

/// An IPv4 or IPv6 address as 16 bytes (IPv4 as an IPv4-mapped IPv6 address, so a v4 range
/// and a v4 address compare whichever way the address was written).
struct Address {
    var bytes: (UInt64, UInt64)
    var v4: Bool

    init?(parsing text: UnsafeRawBufferPointer) {
        guard text.count > 0, text.count < 64 else { return nil }
        var buffer = [CChar](repeating: 0, count: 64)
        for i in 0..<text.count { buffer[i] = CChar(bitPattern: text[i]) }
        var v6 = in6_addr()
        var v4addr = in_addr()
        if inet_pton(AF_INET, buffer, &v4addr) == 1 {
            let b = withUnsafeBytes(of: v4addr) { Array($0) }
            bytes = (0, 0x0000_ffff_0000_0000 | UInt64(b[0]) << 24 | UInt64(b[1]) << 16 | UInt64(b[2]) << 8 | UInt64(b[3]))
            v4 = true
        } else if inet_pton(AF_INET6, buffer, &v6) == 1 {
            let b = withUnsafeBytes(of: v6) { Array($0) }
            var hi: UInt64 = 0, lo: UInt64 = 0
            for i in 0..<8 { hi = hi << 8 | UInt64(b[i]) }
            for i in 8..<16 { lo = lo << 8 | UInt64(b[i]) }
            bytes = (hi, lo)
            v4 = hi == 0 && lo >> 32 == 0xffff
        } else {
            return nil
        }
    }

    init?(parsing text: String) {
        var t = text
        guard let a = t.withUTF8({ Address(parsing: UnsafeRawBufferPointer($0)) }) else { return nil }
        self = a
    }

    var text: String {
        if v4 {
            let n = bytes.1
            return "\(n >> 24 & 255).\(n >> 16 & 255).\(n >> 8 & 255).\(n & 255)"
        }
        var b = [UInt8](repeating: 0, count: 16)
        for i in 0..<8 { b[i] = UInt8(truncatingIfNeeded: bytes.0 >> UInt64(56 - 8 * i)) }
        for i in 0..<8 { b[8 + i] = UInt8(truncatingIfNeeded: bytes.1 >> UInt64(56 - 8 * i)) }
        var buffer = [CChar](repeating: 0, count: 64)
        var addr = in6_addr()
        withUnsafeMutableBytes(of: &addr) { $0.copyBytes(from: b) }
        _ = inet_ntop(AF_INET6, &addr, &buffer, 64)
        return String(decoding: buffer.prefix { $0 != 0 }.map { UInt8(bitPattern: $0) }, as: UTF8.self)
    }
}

/// A range: an address and a prefix length over the 128-bit form.
struct CIDR {
    var hi: UInt64
    var lo: UInt64
    var maskHi: UInt64
    var maskLo: UInt64

    init?(parsing text: String) {
        let parts = text.split(separator: "/", maxSplits: 1, omittingEmptySubsequences: false)
        guard let address = Address(parsing: String(parts[0])) else { return nil }
        var prefix = address.v4 ? 32 : 128
        if parts.count == 2 {
            guard let p = Int(parts[1]), p >= 0, p <= prefix, parts[1].allSatisfy(\.isNumber) else { return nil }
            prefix = p
        }
        if address.v4 { prefix += 96 }
        maskHi = prefix >= 64 ? UInt64.max : (prefix == 0 ? 0 : UInt64.max << UInt64(64 - prefix))
        maskLo = prefix <= 64 ? 0 : (prefix == 128 ? UInt64.max : UInt64.max << UInt64(128 - prefix))
        hi = address.bytes.0 & maskHi
        lo = address.bytes.1 & maskLo
    }

    @inline(__always)
    func contains(_ a: Address) -> Bool {
        a.bytes.0 & maskHi == hi && a.bytes.1 & maskLo == lo
    }
}
