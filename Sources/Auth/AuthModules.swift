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
    /// `modules`' test helpers, for `moongate test`: `harness.jwt`, on the same keysets the
    /// policies verify with (so a test can give a JWKS URL's keyset its keys).
    public static func helpers(for modules: [any LuaModule]) -> [any LuaModule] {
        modules.compactMap { $0 as? JWTModule }.map { JWTTestHelpers(keysets: $0.keysets) }
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
        Lua.setFunction(L, "jwks") { L in JWTTestHelpers.jwks(L!) }
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
            Lua.rawField(L, 3, "alg")
            if let a = Lua.string(L, -1) { algName = a }
            Lua.rawField(L, 3, "kid")
            kid = Lua.string(L, -1)
            Lua.rawField(L, 3, "private_key")
            privateKey = Lua.string(L, -1)
            lua_settop(L, 3)
        }
        guard let algName, let alg = Algorithm.byName[algName] else { return Lua.raise(L, "harness.jwt.sign: unknown algorithm") }
        var header = "{\"alg\":\"\(algName)\",\"typ\":\"JWT\""
        if let kid { header += ",\"kid\":\"\(kid)\"" }
        header += "}"
        lua_settop(L, 3)
        guard let payload = encodeClaims(L) else { return Lua.raise(L, "harness.jwt.sign: claims must be a table json.encode can encode") }
        let input = Base64URL.encode(Array(header.utf8)) + "." + Base64URL.encode(payload)
        var signature = [UInt8](repeating: 0, count: 1024)
        var length = 0
        if Algorithm.isHMAC(alg) {
            let candidates = keyset.keys + (keyset.remote?.current?.keys ?? [])
            guard let secret = candidates.first(where: { $0.secret != nil && (kid == nil || $0.kid == kid) })?.secret else {
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

    /// `harness.jwt.jwks(keyset, document)`: the keys a keyset with a JWKS URL has, as if its
    /// provider had served `document` (a JWKS as JSON text); no network in tests.
    static func jwks(_ L: OpaquePointer) -> Int32 {
        guard let name = Lua.string(L, 1), let document = Lua.bytes(L, 2) else {
            return Lua.raise(L, "harness.jwt.jwks(keyset, jwks_json)")
        }
        lua_getfield(L, mg_registry_index(), "moongate.jwt.test-keysets")
        let keysets = lua_touserdata(L, -1).map { Unmanaged<Keysets>.fromOpaque($0).takeUnretainedValue() }
        mg_pop(L, 1)
        guard let remote = keysets?[name]?.remote else { return Lua.raise(L, "harness.jwt.jwks: keyset \"\(name)\" has no jwks_url") }
        do {
            remote.publish(try KeyList.parse(jwks: Array(document), keyset: name, source: "harness.jwt.jwks"))
        } catch {
            return Lua.raise(L, "harness.jwt.jwks: \(error)")
        }
        return 0
    }

    /// The claims table at 1 as JSON, by the `json` module's own encoder (called protected).
    static func encodeClaims(_ L: OpaquePointer) -> [UInt8]? {
        lua_pushcclosure(L, mg_json_encode, 0)
        lua_pushvalue(L, 1)
        defer { lua_settop(L, 3) }
        guard mg_pcall(L, 1, 1, 0) == LUA_OK, let bytes = Lua.bytes(L, -1) else { return nil }
        return Array(bytes)
    }
}
