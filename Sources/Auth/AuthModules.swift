import CJOSE
import CLuaRuntime
import Config
import FoundationEssentials
import Glibc
import HTTPClient
import Scripting

/// The Lua modules this module provides, built for one config generation.
public enum AuthModules {
    /// `jwt` with the config's keysets, `apikey` with its key sets and `oauth2` with its
    /// introspection endpoints (parsed now: call it off the event loops). `introspection`
    /// replaces the HTTP transport (the harness's `StubIntrospection`).
    public static func make(_ config: GatewayConfig, introspection: (any IntrospectionTransport)? = nil) throws(KeysetError) -> [any LuaModule] {
        [
            JWTModule(keysets: try Keysets(config.keysets)), try APIKeyModule(config.apiKeys),
            try OAuth2Module(config.introspection, transport: introspection),
        ]
    }

    /// `modules`' test helpers, for `moongate test`: `harness.jwt`, on the same keysets the
    /// policies verify with (so a test can give a JWKS URL's keyset its keys), and
    /// `harness.oauth2` when introspection goes to a `StubIntrospection`.
    public static func helpers(for modules: [any LuaModule]) -> [any LuaModule] {
        var out: [any LuaModule] = modules.compactMap { $0 as? JWTModule }.map { JWTTestHelpers(keysets: $0.keysets) }
        for case let module as OAuth2Module in modules {
            if let stub = module.stub { out.append(OAuth2TestHelpers(stub: stub, servers: module.context.index)) }
        }
        return out
    }

    /// What the harness resets before each test: introspection answers and caches.
    public static func reset(_ modules: [any LuaModule]) {
        for case let module as OAuth2Module in modules {
            module.stub?.reset()
            module.clearCaches()
        }
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
        guard let payload = encodeJSON(L, 1) else { return Lua.raise(L, "harness.jwt.sign: claims must be a table json.encode can encode") }
        let input = Base64URL.encode(Array(header.utf8)) + "." + Base64URL.encode(payload)
        var signature = [UInt8](repeating: 0, count: 1024)
        var length = 0
        if Algorithm.isHMAC(alg) {
            let candidates = keyset.keys + (keyset.remote?.current?.keys ?? [])
            guard let secret = candidates.first(where: { $0.secret != nil && (kid == nil || $0.kid == kid || $0.kid == nil) })?.secret else {
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

    /// The table at `index` as JSON, by the `json` module's own encoder (called protected).
    static func encodeJSON(_ L: OpaquePointer, _ index: Int32) -> [UInt8]? {
        let top = lua_gettop(L)
        lua_pushcclosure(L, mg_json_encode, 0)
        lua_pushvalue(L, index)
        defer { lua_settop(L, top) }
        guard mg_pcall(L, 1, 1, 0) == LUA_OK, let bytes = Lua.bytes(L, -1) else { return nil }
        return Array(bytes)
    }
}

/// `harness.oauth2.answer(server, token, answer)`: what the introspection endpoint says of
/// `token` (a table such as `{active = true, sub = "ann", exp = ...}`; nil: inactive), and
/// `harness.oauth2.fail(server, "timeout" | "unavailable" | nil)`: the endpoint failing.
struct OAuth2TestHelpers: LuaModule {
    let name = "oauth2"
    /// Held by the program that holds this module, which outlives its states.
    let box: Box

    init(stub: StubIntrospection, servers: [String: Int]) {
        box = Box(stub, servers)
    }

    final class Box: @unchecked Sendable {
        let stub: StubIntrospection
        let servers: [String: Int]
        init(_ stub: StubIntrospection, _ servers: [String: Int]) {
            self.stub = stub
            self.servers = servers
        }
    }

    func register(_ L: OpaquePointer) {
        lua_pushlightuserdata(L, Unmanaged.passUnretained(box).toOpaque())
        lua_setfield(L, mg_registry_index(), "moongate.oauth2.test")
        Lua.setFunction(L, "answer") { L in OAuth2TestHelpers.answer(L!) }
        Lua.setFunction(L, "fail") { L in OAuth2TestHelpers.fail(L!) }
    }

    static func box(_ L: OpaquePointer) -> Box {
        lua_getfield(L, mg_registry_index(), "moongate.oauth2.test")
        defer { mg_pop(L, 1) }
        return Unmanaged<Box>.fromOpaque(lua_touserdata(L, -1)!).takeUnretainedValue()
    }

    static func answer(_ L: OpaquePointer) -> Int32 {
        let box = box(L)
        guard let name = Lua.string(L, 1), let token = Lua.bytes(L, 2) else {
            return Lua.raise(L, "harness.oauth2.answer(server, token, answer_table_or_nil)")
        }
        guard let server = box.servers[name] else { return Lua.raise(L, "harness.oauth2.answer: no introspection server \"\(name)\"") }
        var body = Array(#"{"active":false}"#.utf8)
        if lua_type(L, 3) == LUA_TTABLE {
            guard let bytes = JWTTestHelpers.encodeJSON(L, 3) else {
                return Lua.raise(L, "harness.oauth2.answer: the answer must be a table json.encode can encode")
            }
            body = bytes
        } else if !Lua.isNoneOrNil(L, 3) {
            return Lua.raise(L, "harness.oauth2.answer: the answer must be a table or nil")
        }
        box.stub.set(server: server, token: Array(token), answer: body)
        return 0
    }

    static func fail(_ L: OpaquePointer) -> Int32 {
        let box = box(L)
        guard let name = Lua.string(L, 1), let server = box.servers[name] else {
            return Lua.raise(L, "harness.oauth2.fail(server, \"timeout\" | \"unavailable\" | nil): unknown server")
        }
        switch Lua.string(L, 2) {
        case "timeout": box.stub.fail(server: server, HTTPFetch.Failure(.timeout, "stub"))
        case "unavailable": box.stub.fail(server: server, HTTPFetch.Failure(.connection, "stub"))
        case nil: box.stub.fail(server: server, nil)
        default: return Lua.raise(L, "harness.oauth2.fail: the failure must be \"timeout\", \"unavailable\" or nil")
        }
        return 0
    }
}
