import CJOSE
import CLuaRuntime
import Config
import Foundation
import Scripting

/// The Lua modules this module provides, built for one config generation.
public enum AuthModules {
    /// `jwt` with the config's keysets and `apikey` with its key sets (parsed now: call it
    /// off the event loops).
    public static func make(_ config: GatewayConfig) throws(KeysetError) -> [any LuaModule] {
        [JWTModule(keysets: try Keysets(config.keysets)), try APIKeyModule(config.apiKeys)]
    }

    /// Their test helpers, for `moongate test`: `harness.jwt`.
    public static func helpers(_ config: GatewayConfig) throws(KeysetError) -> [any LuaModule] {
        [JWTTestHelpers(keysets: try Keysets(config.keysets))]
    }
}

/// `harness.jwt.sign(claims, keyset [, {alg=, kid=, private_key=}])`: a token the keyset
/// accepts. HS keysets sign with their secret; others need the private key's PEM.
struct JWTTestHelpers: LuaModule {
    let name = "jwt"
    let keysets: Keysets

    func register(_ L: OpaquePointer) {
        lua_pushlightuserdata(L, Unmanaged.passUnretained(keysets).toOpaque())
        lua_setfield(L, mg_registry_index(), "moongate.jwt.test-keysets")
        Lua.setFunction(L, "sign") { L in JWTTestHelpers.sign(L!) }
    }

    static func sign(_ L: OpaquePointer) -> Int32 {
        lua_getfield(L, mg_registry_index(), "moongate.jwt.test-keysets")
        let keysets = lua_touserdata(L, -1).map { Unmanaged<Keysets>.fromOpaque($0).takeUnretainedValue() }
        mg_pop(L, 1)
        guard lua_type(L, 1) == LUA_TTABLE, let name = Lua.string(L, 2) else {
            return Lua.raise(L, "harness.jwt.sign(claims, keyset [, {alg=, kid=, private_key=}])")
        }
        guard let keyset = keysets?[name] else { return Lua.raise(L, "harness.jwt.sign: no keyset \"\(name)\" in the config") }
        var algName = Algorithm.byName.first { keyset.algorithms.contains($0.value.rawValue) }?.key
        var kid: String?
        var privateKey: String?
        if lua_type(L, 3) == LUA_TTABLE {
            lua_getfield(L, 3, "alg")
            if let a = Lua.string(L, -1) { algName = a }
            lua_getfield(L, 3, "kid")
            kid = Lua.string(L, -1)
            lua_getfield(L, 3, "private_key")
            privateKey = Lua.string(L, -1)
            lua_settop(L, 3)
        }
        guard let algName, let alg = Algorithm.byName[algName] else { return Lua.raise(L, "harness.jwt.sign: unknown algorithm") }
        var header = "{\"alg\":\"\(algName)\",\"typ\":\"JWT\""
        if let kid { header += ",\"kid\":\"\(kid)\"" }
        header += "}"
        guard let payload = encodeClaims(L) else { return Lua.raise(L, "harness.jwt.sign: claims must be a table of strings, numbers, booleans and tables") }
        let input = Base64URL.encode(Array(header.utf8)) + "." + Base64URL.encode(payload)
        var signature = [UInt8](repeating: 0, count: 1024)
        var length = 0
        if Algorithm.isHMAC(alg) {
            guard let secret = keyset.keys.first(where: { $0.secret != nil && (kid == nil || $0.kid == kid) })?.secret else {
                return Lua.raise(L, "harness.jwt.sign: keyset \"\(name)\" has no secret")
            }
            length = Array(input.utf8).withUnsafeBufferPointer { mg_hmac(alg, secret, secret.count, $0.baseAddress, $0.count, &signature) }
        } else {
            guard let pem = privateKey, let key = pem.withCString({ mg_pem_private_key($0, strlen($0)) }) else {
                return Lua.raise(L, "harness.jwt.sign: \(algName) needs private_key = a PEM private key")
            }
            defer { mg_key_free(key) }
            length = Array(input.utf8).withUnsafeBufferPointer { mg_jws_sign(alg, key, $0.baseAddress, $0.count, &signature) }
        }
        guard length > 0 else { return Lua.raise(L, "harness.jwt.sign: signing failed") }
        Lua.push(L, input + "." + Base64URL.encode(Array(signature[0..<length])))
        return 1
    }

    /// The claims table at 1 as compact JSON (keys sorted, for stable tokens).
    static func encodeClaims(_ L: OpaquePointer) -> [UInt8]? {
        func value(_ index: Int32, depth: Int) -> String? {
            switch lua_type(L, index) {
            case LUA_TSTRING: return quote(Lua.string(L, index)!)
            case LUA_TNUMBER: return Lua.integer(L, index).map(String.init) ?? String(lua_tonumberx(L, index, nil))
            case LUA_TBOOLEAN: return lua_toboolean(L, index) != 0 ? "true" : "false"
            case LUA_TTABLE:
                guard depth < 8 else { return nil }
                let n = Int(lua_rawlen(L, index))
                var parts: [String] = []
                if n > 0 {
                    for i in 1...n {
                        lua_rawgeti(L, index, lua_Integer(i))
                        defer { mg_pop(L, 1) }
                        guard let v = value(lua_gettop(L), depth: depth + 1) else { return nil }
                        parts.append(v)
                    }
                    return "[" + parts.joined(separator: ",") + "]"
                }
                var pairs: [(String, String)] = []
                lua_pushnil(L)
                while lua_next(L, index) != 0 {
                    guard let key = Lua.string(L, -2), let v = value(lua_gettop(L), depth: depth + 1) else {
                        lua_settop(L, index)
                        return nil
                    }
                    pairs.append((key, v))
                    mg_pop(L, 1)
                }
                return "{" + pairs.sorted { $0.0 < $1.0 }.map { "\(quote($0.0)):\($0.1)" }.joined(separator: ",") + "}"
            default: return nil
            }
        }
        return value(1, depth: 0).map { Array($0.utf8) }
    }

    static func quote(_ s: String) -> String {
        var out = "\""
        for scalar in s.unicodeScalars {
            switch scalar {
            case "\"": out += "\\\""
            case "\\": out += "\\\\"
            case "\n": out += "\\n"
            default:
                if scalar.value < 0x20 { out += String(format: "\\u%04x", scalar.value) } else { out.unicodeScalars.append(scalar) }
            }
        }
        return out + "\""
    }
}
