import CJOSE
import CLuaRuntime
import Scripting

/// `jwt.verify(token, keyset [, options])`: the claims, or `nil, reason` with a stable reason
/// a script can branch on. The signature is checked with OpenSSL before anything of the
/// payload is looked at; the header's `alg` must be allowed by the keyset and fit the key.
public struct JWTModule: LuaModule {
    public let name = "jwt"
    public let keysets: Keysets

    public init(keysets: Keysets) {
        self.keysets = keysets
    }

    static let registryKey = "moongate.jwt.keysets"
    /// Longest token looked at: anything longer is refused unread.
    static let maxTokenBytes = 16 * 1024
    /// Longest token kept in the cache of verified tokens (bounds its memory).
    static let maxCachedTokenBytes = 4 * 1024

    public func register(_ L: OpaquePointer) {
        // The program that holds this module outlives its states: an unretained pointer is safe.
        lua_pushlightuserdata(L, Unmanaged.passUnretained(keysets).toOpaque())
        lua_setfield(L, mg_registry_index(), Self.registryKey)
        Lua.setFunction(L, "verify") { L in JWTModule.verify(L!) }
    }

    static func keysets(_ L: OpaquePointer) -> Keysets? {
        lua_getfield(L, mg_registry_index(), registryKey)
        defer { mg_pop(L, 1) }
        guard let p = lua_touserdata(L, -1) else { return nil }
        return Unmanaged<Keysets>.fromOpaque(p).takeUnretainedValue()
    }

    static func refuse(_ L: OpaquePointer, _ reason: StaticString) -> Int32 {
        countFailure(L, "jwt", reason.description)
        lua_pushnil(L)
        reason.withUTF8Buffer { Lua.push(L, bytes: UnsafeRawBufferPointer($0)) }
        return 2
    }

    static func verify(_ L: OpaquePointer) -> Int32 {
        guard let name = Lua.string(L, 2) else { return Lua.raise(L, "jwt.verify(token, keyset [, options]): the keyset name must be a string") }
        guard let keyset = keysets(L)?[name] else { return Lua.raise(L, "jwt.verify: no keyset \"\(name)\" in the config") }
        guard let token = Lua.bytes(L, 1) else { return refuse(L, "malformed") }
        if token.count > maxTokenBytes { return refuse(L, "too_large") }
        guard let dot1 = token.firstIndex(of: UInt8(ascii: ".")),
            let dot2 = token[(dot1 + 1)...].firstIndex(of: UInt8(ascii: ".")),
            !token[(dot2 + 1)...].contains(UInt8(ascii: "."))
        else { return refuse(L, "malformed") }
        let options = Lua.isNoneOrNil(L, 3) ? nil : Int32(3)
        if let options, lua_type(L, options) != LUA_TTABLE { return Lua.raise(L, "jwt.verify: options must be a table") }

        // A token verified before on this worker: its payload, without the signature check.
        let cache = token.count <= maxCachedTokenBytes ? keyset.cache() : nil
        let cacheKey = cache == nil ? [] : Array(token)
        if let cache, let payload = cache.lookup(cacheKey, now: Lua.now(L)) {
            let pushed = payload.withUnsafeBytes { mg_json_push(L, $0.baseAddress?.assumingMemoryBound(to: CChar.self), $0.count) }
            guard pushed == 1 else { return refuse(L, "bad_claims") }
            if let reason = checkClaims(L, lua_gettop(L), keyset, options: options) {
                lua_settop(L, 3)
                return refuse(L, reason)
            }
            return 1
        }

        return withUnsafeTemporaryAllocation(of: UInt8.self, capacity: token.count + 8) { scratch in
            let out = scratch.baseAddress!
            func decode(_ from: Int, _ to: Int) -> Int {
                Int(mg_b64url_decode(token.baseAddress!.assumingMemoryBound(to: CChar.self) + from, to - from, out))
            }
            // The header: alg and kid.
            let headerLength = decode(0, dot1)
            guard headerLength > 0 else { return refuse(L, "bad_base64") }
            guard mg_json_push(L, UnsafeRawPointer(out).assumingMemoryBound(to: CChar.self), headerLength) == 1 else { return refuse(L, "bad_header") }
            guard lua_type(L, -1) == LUA_TTABLE else { return refuse(L, "bad_header") }
            let header = lua_gettop(L)
            lua_getfield(L, header, "alg")
            let algName = Lua.string(L, -1)
            lua_getfield(L, header, "kid")
            let kid = Lua.string(L, -1)
            let kidGiven = lua_type(L, -1) != LUA_TNIL
            lua_getfield(L, header, "crit")
            let crit = lua_type(L, -1) != LUA_TNIL
            lua_settop(L, header - 1)
            guard let algName else { return refuse(L, "bad_header") }
            // Any spelling of "none" (a lowercased copy only for 4-letter names: this runs per request).
            if algName.utf8.count == 4, algName.lowercased() == "none" { return refuse(L, "alg_none") }
            guard let alg = Algorithm.byName[algName], keyset.algorithms.contains(alg.rawValue) else { return refuse(L, "alg_not_allowed") }
            // No extension of JWS is understood here, so none may be critical (RFC 7515 4.1.11).
            if crit { return refuse(L, "unsupported_crit") }
            if kidGiven, kid == nil { return refuse(L, "bad_header") }

            // The signature, against each key that may check it (the one named by kid).
            let signatureLength = decode(dot2 + 1, token.count)
            guard signatureLength > 0, signatureLength <= 1024 else { return refuse(L, signatureLength < 0 ? "bad_base64" : "bad_signature") }
            // The configured keys, then those the worker last got from the JWKS URL.
            let input = UnsafeRawBufferPointer(start: token.baseAddress, count: dot2)
            let signature = UnsafeRawBufferPointer(start: out, count: signatureLength)
            var (named, verified) = check(keyset.keys, alg: alg, kid: kid, input: input, signature: signature)
            if !verified, let remote = keyset.remote?.current {
                let more = check(remote.keys, alg: alg, kid: kid, input: input, signature: signature)
                named = named || more.named
                verified = more.verified
            }
            if kid != nil, !named {
                // Perhaps the provider rotated: the fetcher looks again (rate-limited).
                keyset.remote?.requestRefetch()
                return refuse(L, "unknown_kid")
            }
            guard verified else { return refuse(L, "bad_signature") }

            // The claims, only now that the signature holds.
            let payloadLength = decode(dot1 + 1, dot2)
            guard payloadLength >= 0 else { return refuse(L, "bad_base64") }
            guard mg_json_push(L, UnsafeRawPointer(out).assumingMemoryBound(to: CChar.self), payloadLength) == 1, lua_type(L, -1) == LUA_TTABLE else {
                lua_settop(L, 3)
                return refuse(L, "bad_claims")
            }
            let claims = lua_gettop(L)
            if let reason = checkClaims(L, claims, keyset, options: options) {
                lua_settop(L, 3)
                return refuse(L, reason)
            }
            if let cache {
                // Kept until its exp (a token without one is not kept).
                if Lua.rawField(L, claims, "exp") == LUA_TNUMBER {
                    let expires = lua_tonumberx(L, -1, nil)
                    cache.insert(cacheKey, payload: Array(UnsafeBufferPointer(start: out, count: payloadLength)), expires: expires, now: Lua.now(L), limit: keyset.cacheEntries)
                }
                mg_pop(L, 1)
            }
            return 1
        }
    }

    /// Tries each key that may check the token and fits `alg`: with a `kid`, the keys named
    /// by it, then the keys configured without one (a PEM key has no kid, and identity
    /// providers set one on every token); without a `kid`, every key. Returns whether any key
    /// was a candidate, and whether one verified `signature` over `input`.
    static func check(
        _ keys: [CompiledKeyset.Key], alg: mg_alg, kid: String?, input: UnsafeRawBufferPointer, signature: UnsafeRawBufferPointer
    ) -> (named: Bool, verified: Bool) {
        var named = false
        func verifies(_ key: CompiledKeyset.Key) -> Bool {
            let ok = (key.secret ?? []).withUnsafeBufferPointer { secret in
                mg_jws_verify(
                    alg, key.pkey, secret.baseAddress, secret.count, input.baseAddress?.assumingMemoryBound(to: UInt8.self), input.count,
                    signature.baseAddress?.assumingMemoryBound(to: UInt8.self), signature.count)
            }
            return ok == 1
        }
        for key in keys where kid == nil || key.kid == kid {
            named = true
            if Algorithm.fits(alg, key), verifies(key) { return (true, true) }
        }
        guard kid != nil else { return (named, false) }
        for key in keys where key.kid == nil && Algorithm.fits(alg, key) {
            named = true
            if verifies(key) { return (true, true) }
        }
        return (named, false)
    }

    /// `exp`, `nbf`, `iat` (with leeway and max age), `iss`, `aud`, required claims.
    static func checkClaims(_ L: OpaquePointer, _ claims: Int32, _ keyset: CompiledKeyset, options: Int32?) -> StaticString? {
        var leeway = keyset.leeway
        var maxAge = keyset.maxAge
        var issuer = keyset.issuer
        var audience = keyset.audience
        var required = keyset.requiredClaims
        if let options {
            Lua.rawField(L, options, "leeway")
            if lua_type(L, -1) == LUA_TNUMBER { leeway = lua_tonumberx(L, -1, nil) }
            Lua.rawField(L, options, "max_age")
            if lua_type(L, -1) == LUA_TNUMBER { maxAge = lua_tonumberx(L, -1, nil) }
            Lua.rawField(L, options, "issuer")
            if let s = Lua.string(L, -1) { issuer = s }
            Lua.rawField(L, options, "audience")
            if let s = Lua.string(L, -1) { audience = [s] } else if lua_type(L, -1) == LUA_TTABLE { audience = strings(L, lua_gettop(L)) }
            Lua.rawField(L, options, "required")
            if lua_type(L, -1) == LUA_TTABLE { required += strings(L, lua_gettop(L)) }
            lua_settop(L, claims)
        }
        let now = Lua.now(L)
        func number(_ field: String) -> (present: Bool, value: Double?) {
            Lua.rawField(L, claims, field)
            defer { mg_pop(L, 1) }
            let type = lua_type(L, -1)
            return (type != LUA_TNIL, type == LUA_TNUMBER ? lua_tonumberx(L, -1, nil) : nil)
        }
        let exp = number("exp"), nbf = number("nbf"), iat = number("iat")
        if (exp.present && exp.value == nil) || (nbf.present && nbf.value == nil) || (iat.present && iat.value == nil) { return "bad_claims" }
        if let e = exp.value, now >= e + leeway { return "expired" }
        if let n = nbf.value, now + leeway < n { return "not_yet_valid" }
        if let i = iat.value, i > now + leeway { return "issued_in_future" }
        if let maxAge {
            guard let i = iat.value else { return "missing_claim" }
            if now - i > maxAge + leeway { return "too_old" }
        }
        if let issuer {
            Lua.rawField(L, claims, "iss")
            let iss = Lua.string(L, -1)
            mg_pop(L, 1)
            if iss != issuer { return "wrong_issuer" }
        }
        if !audience.isEmpty {
            Lua.rawField(L, claims, "aud")
            let given: [String] = Lua.string(L, -1).map { [$0] } ?? (lua_type(L, -1) == LUA_TTABLE ? strings(L, lua_gettop(L)) : [])
            mg_pop(L, 1)
            if !given.contains(where: { audience.contains($0) }) { return "wrong_audience" }
        }
        for claim in required {
            Lua.rawField(L, claims, claim)
            let missing = lua_type(L, -1) == LUA_TNIL
            mg_pop(L, 1)
            if missing { return "missing_claim" }
        }
        return nil
    }

    /// The strings of the list at `index` (at most 100).
    static func strings(_ L: OpaquePointer, _ index: Int32) -> [String] {
        var out: [String] = []
        for i in 0..<min(Int(lua_rawlen(L, index)), 100) {
            lua_rawgeti(L, index, lua_Integer(i + 1))
            if let s = Lua.string(L, -1) { out.append(s) }
            mg_pop(L, 1)
        }
        return out
    }
}
