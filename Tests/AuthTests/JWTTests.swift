import Config
import Foundation
import Testing

@testable import Auth
@testable import Harness

/// `jwt.verify` against RFC 7515's worked examples and tokens made by joserfc (an
/// independent JOSE library; Fixtures/make_fixtures.py), and every way of breaking them.
/// The checks are Lua tests run by the harness, as a policy author would write them.
@Suite struct JWTTests {
    static let fixtures = Bundle.module.url(forResource: "Fixtures", withExtension: nil)!

    static func json(_ name: String) throws -> [String: Any] {
        try JSONSerialization.jsonObject(with: Data(contentsOf: fixtures.appendingPathComponent(name))) as! [String: Any]
    }

    /// Runs `tests` (Lua) in a project whose config has the test keysets; returns the failures.
    func run(_ tests: String) throws -> [String] {
        let folder = FileManager.default.temporaryDirectory.appendingPathComponent("moongate-jwt-\(UUID().uuidString)").path
        try FileManager.default.createDirectory(atPath: folder + "/policies", withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(atPath: folder) }
        let lib = try Self.json("joserfc.json")
        try JSONSerialization.data(withJSONObject: lib["jwks"]!).write(to: URL(fileURLWithPath: folder + "/lib_jwks.json"))
        let publicPEM = lib["public_pem"] as! [String: String]
        try publicPEM["RS256"]!.write(toFile: folder + "/rs256.pem", atomically: true, encoding: .utf8)
        try publicPEM["ES256"]!.write(toFile: folder + "/es256.pem", atomically: true, encoding: .utf8)
        try publicPEM["ES384"]!.write(toFile: folder + "/es384.pem", atomically: true, encoding: .utf8)
        try JSONSerialization.data(withJSONObject: try Self.json("rfc7515.json")["jwks"]!).write(to: URL(fileURLWithPath: folder + "/rfc_jwks.json"))
        try """
        listeners:
          - address: 127.0.0.1:8080
        upstreams:
          app:
            targets: [ "127.0.0.1:9" ]
        routes:
          - match: { path_prefix: / }
            upstream: app
            policy: auth.lua
        keysets:
          rfc: { algorithms: [HS256, RS256, ES256], jwks_file: rfc_jwks.json }
          lib:
            algorithms: [HS256, HS384, HS512, RS256, RS384, RS512, PS256, PS384, PS512, ES256, ES384, ES512, EdDSA]
            jwks_file: lib_jwks.json
            issuer: fixtures
            audience: [api, other]
          rsonly: { algorithms: [RS256], keys: [ { kid: rs256, pem_file: rs256.pem } ] }
          pemnokid: { algorithms: [RS256], keys: [ { pem_file: rs256.pem } ] }
          namedandnot: { algorithms: [RS256, ES256], keys: [ { kid: es256, pem_file: es256.pem }, { pem_file: rs256.pem } ] }
          mixed: { algorithms: [HS256, RS256], secret: another-secret, keys: [ { kid: rs256, pem_file: rs256.pem } ] }
          p256: { algorithms: [ES256, ES384], keys: [ { kid: es256, pem_file: es256.pem }, { kid: es384, pem_file: es384.pem } ] }
          hs: { algorithms: [HS256], secret: test-secret, issuer: bench, required_claims: [sub], max_age: 1h }
          idp: { algorithms: [HS256], jwks_url: "http://127.0.0.1:9/jwks" }
        """.write(toFile: folder + "/gateway.yaml", atomically: true, encoding: .utf8)
        try """
        return { access = function()
          local claims, reason = jwt.verify((request.header("Authorization") or ""):match("^Bearer%s+(.+)$"), "hs")
          if not claims then request.respond(401, reason) end
          request.set_header("X-User", claims.sub)
        end }
        """.write(toFile: folder + "/policies/auth.lua", atomically: true, encoding: .utf8)
        try tests.write(toFile: folder + "/policies/jwt_test.lua", atomically: true, encoding: .utf8)
        let config = try ConfigLoader.load(path: folder + "/gateway.yaml")
        let modules = try AuthModules.make(config)
        let runner = TestRunner(config: config, modules: modules, helpers: AuthModules.helpers(for: modules))
        let results = runner.run(TestRunner.discover([folder + "/policies"]))
        let totals = TestReport.totals(results)
        #expect(totals.passed > 0, "\(TestReport.text(results))")
        return results.flatMap { file in (file.loadError.map { [$0] } ?? []) + file.tests.filter { $0.status == .failed }.map { "\($0.name): \($0.message ?? "")" } }
    }

    static func lua(_ s: String) -> String { "\"" + s + "\"" }

    @Test func rfc7515Examples() throws {
        let tokens = try Self.json("rfc7515.json")["tokens"] as! [String: String]
        let failures = try run("""
            local tokens = {HS256 = \(Self.lua(tokens["HS256"]!)), RS256 = \(Self.lua(tokens["RS256"]!)), ES256 = \(Self.lua(tokens["ES256"]!))}
            for alg, token in pairs(tokens) do
              it(alg .. " verifies", function()
                harness.clock.set(1300819000)
                local claims, reason = jwt.verify(token, "rfc")
                assert.equals(nil, reason)
                assert.equals("joe", claims.iss)
                assert.is_true(claims["http://example.com/is_root"])
              end)
              it(alg .. " expires", function()
                harness.clock.set(1300819380)
                assert.same({nil, "expired"}, {jwt.verify(token, "rfc")})
              end)
            end
            """)
        #expect(failures.isEmpty, "\(failures)")
    }

    @Test func joserfcTokensVerify() throws {
        let lib = try Self.json("joserfc.json")
        let tokens = (lib["tokens"] as! [String: String]).sorted { $0.key < $1.key }
        let table = tokens.map { "[\(Self.lua($0.key))] = \(Self.lua($0.value))" }.joined(separator: ",\n  ")
        let failures = try run("""
            local tokens = {
              \(table)
            }
            for alg, token in pairs(tokens) do
              it(alg .. " from joserfc verifies", function()
                harness.clock.set(1700000100)
                local claims, reason = jwt.verify(token, "lib")
                assert.equals(nil, reason)
                assert.equals("alice", claims.sub)
              end)
              it(alg .. " with a changed payload is refused", function()
                harness.clock.set(1700000100)
                local h, p, s = token:match("^([^.]+)%.([^.]+)%.([^.]+)$")
                local forged = h .. "." .. p:sub(1, -3) .. (p:sub(-2, -2) == "A" and "B" or "A") .. p:sub(-1) .. "." .. s
                assert.same({nil, "bad_signature"}, {jwt.verify(forged, "lib")})
              end)
            end
            """)
        #expect(failures.isEmpty, "\(failures)")
    }

    @Test func everyWayOfBreakingATokenIsRefused() throws {
        let lib = try Self.json("joserfc.json")
        let tokens = lib["tokens"] as! [String: String]
        let publicPEM = (lib["public_pem"] as! [String: String])["RS256"]!
        let privateP384 = (lib["private_pem"] as! [String: String])["ES384"]!
        let failures = try run(#"""
            local RS256, ES256, HS256 = \#(Self.lua(tokens["RS256"]!)), \#(Self.lua(tokens["ES256"]!)), \#(Self.lua(tokens["HS256"]!))
            local rsa_public_pem = [[\#(publicPEM)]]
            local p384_private = [[\#(privateP384)]]
            local function b64(s)
              local alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
              local out = {}
              for i = 1, #s, 3 do
                local a, b, c = s:byte(i, i + 2)
                local n = a * 65536 + (b or 0) * 256 + (c or 0)
                local chars = 2 + (b and 1 or 0) + (c and 1 or 0)
                for j = 1, chars do
                  local v = (n >> (18 - 6 * (j - 1))) & 63
                  out[#out + 1] = alphabet:sub(v + 1, v + 1)
                end
              end
              return table.concat(out)
            end
            local function parts(t) return t:match("^([^.]+)%.([^.]+)%.([^.]+)$") end
            local function refused(token, keyset, reason, options)
              local claims, got = jwt.verify(token, keyset, options)
              assert.is_nil(claims)
              assert.equals(reason, got)
            end
            before_each(function() harness.clock.set(1700000100) end)

            it("with the wrong key", function()
              local _, p, s = parts(RS256)
              refused(b64('{"alg":"RS256","kid":"rs384"}') .. "." .. p .. "." .. s, "lib", "bad_signature")
            end)
            it("alg none", function()
              local _, p = parts(RS256)
              refused(b64('{"alg":"none"}') .. "." .. p .. ".", "lib", "alg_none")
              refused(b64('{"alg":"None"}') .. "." .. p .. ".x", "lib", "alg_none")
            end)
            it("HS256 signed with the RSA public key as its secret", function()
              local _, p = parts(RS256)
              local header = b64('{"alg":"HS256","kid":"rs256"}')
              local token = harness.jwt.sign(json.decode('{"sub":"mallory"}'), "hs")
              -- sign the header and payload with the PEM text as an HMAC key, as the attack does
              local forged = header .. "." .. p .. "." .. select(3, parts(token))
              refused(forged, "rsonly", "alg_not_allowed")
              refused(forged, "mixed", "bad_signature")
            end)
            it("an altered header", function()
              local h, p, s = parts(ES256)
              refused(b64('{"alg":"ES256","kid":"es256","x":1}') .. "." .. p .. "." .. s, "lib", "bad_signature")
            end)
            it("bad base64url", function()
              local h, p, s = parts(HS256)
              refused(h .. "!" .. "." .. p .. "." .. s, "lib", "bad_base64")
              refused(h .. "." .. p .. "." .. s .. "=", "lib", "bad_base64")
              -- the signature covers the payload's text: a bad one fails there, before decoding
              refused(h .. "." .. p .. "!" .. "." .. s, "lib", "bad_signature")
              refused("e30." .. p .. "." .. s, "lib", "bad_header")
            end)
            it("expired, not yet valid, issued in the future", function()
              harness.clock.set(1700003600)
              refused(RS256, "lib", "expired")
              harness.clock.set(1700003599)
              assert.not_nil(jwt.verify(RS256, "lib"))
              harness.clock.set(1699999999)
              refused(RS256, "lib", "not_yet_valid")
              assert.not_nil(jwt.verify(RS256, "lib", {leeway = 5}))
            end)
            it("wrong iss or aud", function()
              refused(RS256, "lib", "wrong_issuer", {issuer = "someone-else"})
              refused(RS256, "lib", "wrong_audience", {audience = "billing"})
              assert.not_nil(jwt.verify(RS256, "lib", {audience = {"billing", "api"}}))
            end)
            it("truncated or oversized", function()
              local h, p = parts(RS256)
              refused(h .. "." .. p, "lib", "malformed")
              refused(RS256 .. ".x", "lib", "malformed")
              local claims, reason = jwt.verify(RS256:sub(1, -5), "lib")
              assert.is_nil(claims)
              assert.truthy(reason == "bad_signature" or reason == "bad_base64", reason)
              refused(string.rep("a", 17000), "lib", "too_large")
              refused(nil, "lib", "malformed")
            end)
            it("the wrong curve", function()
              -- an ES384 signature made with a P-384 key, presented for the P-256 key's kid
              local token = harness.jwt.sign({sub = "x"}, "p256", {alg = "ES384", kid = "es256", private_key = p384_private})
              refused(token, "p256", "bad_signature")
              -- and claiming ES256 with a signature of the wrong size
              local h, p, s = parts(token)
              refused(b64('{"alg":"ES256","kid":"es256"}') .. "." .. p .. "." .. s, "p256", "bad_signature")
            end)
            it("an unknown kid", function()
              local _, p, s = parts(RS256)
              refused(b64('{"alg":"RS256","kid":"nobody"}') .. "." .. p .. "." .. s, "lib", "unknown_kid")
            end)
            it("an algorithm the keyset does not allow", function()
              refused(HS256, "rsonly", "alg_not_allowed")
            end)
            it("options are read without metamethods", function()
              local tricky = setmetatable({}, {__index = function() error("never called") end})
              assert.not_nil(jwt.verify(RS256, "lib", tricky))
            end)
            it("an unknown keyset is the script's error", function()
              assert.error_matches(function() jwt.verify(RS256, "nope") end, 'no keyset "nope"')
            end)
            """#)
        #expect(failures.isEmpty, "\(failures)")
    }

    /// The harness signs tokens for a keyset; the policy verifies them with the fake clock.
    @Test func harnessSignsTestTokens() throws {
        let failures = try run("""
            it("a signed token passes the policy", function()
              local token = harness.jwt.sign({sub = "alice", iss = "bench", iat = harness.clock.now(), exp = harness.clock.now() + 60}, "hs")
              local res = harness.request{path = "/x", headers = {Authorization = "Bearer " .. token}}
              assert.equals(200, res.status)
              assert.equals("alice", res.upstream.headers["x-user"])
            end)
            it("and expires with the clock", function()
              local token = harness.jwt.sign({sub = "alice", iss = "bench", iat = harness.clock.now(), exp = harness.clock.now() + 60}, "hs")
              harness.clock.advance(61)
              local res = harness.request{path = "/x", headers = {Authorization = "Bearer " .. token}}
              assert.equals(401, res.status)
              assert.equals("expired", res.body)
            end)
            it("max_age and required claims hold", function()
              local old = harness.jwt.sign({sub = "a", iss = "bench", iat = harness.clock.now() - 7200, exp = harness.clock.now() + 60}, "hs")
              assert.same({nil, "too_old"}, {jwt.verify(old, "hs")})
              local anonymous = harness.jwt.sign({iss = "bench", iat = harness.clock.now()}, "hs")
              assert.same({nil, "missing_claim"}, {jwt.verify(anonymous, "hs")})
            end)
            """)
        #expect(failures.isEmpty, "\(failures)")
    }

    /// A key configured without a kid is a candidate for any token whose alg it can check,
    /// kid or not (identity providers set one on every token); a named key still comes first,
    /// and a kid that names nothing when no kid-less key fits is still `unknown_kid`.
    @Test func keysWithoutAKidCheckTokensThatCarryOne() throws {
        let lib = try Self.json("joserfc.json")
        let privateRS256 = (lib["private_pem"] as! [String: String])["RS256"]!
        let privateES256 = (lib["private_pem"] as! [String: String])["ES256"]!
        let failures = try run(#"""
            local rs = [[\#(privateRS256)]]
            local es = [[\#(privateES256)]]
            before_each(function() harness.clock.set(1700000100) end)
            it("a PEM key without a kid checks a token with one", function()
              local token = harness.jwt.sign({sub = "idp-user"}, "pemnokid", {alg = "RS256", kid = "2024-rotation-7", private_key = rs})
              local claims, reason = jwt.verify(token, "pemnokid")
              assert.equals(nil, reason)
              assert.equals("idp-user", claims.sub)
            end)
            it("and refuses a forged one", function()
              local token = harness.jwt.sign({sub = "x"}, "pemnokid", {alg = "RS256", kid = "k", private_key = rs})
              local h, p, s = token:match("^([^.]+)%.([^.]+)%.([^.]+)$")
              assert.same({nil, "bad_signature"}, {jwt.verify(h .. "." .. p .. "." .. s:sub(1, -3) .. "AA", "pemnokid")})
            end)
            it("an HS secret without a kid checks a token with one", function()
              local token = harness.jwt.sign({sub = "a", iss = "bench", iat = harness.clock.now()}, "hs", {kid = "any"})
              assert.equals("a", (jwt.verify(token, "hs")).sub)
            end)
            it("named keys and kid-less keys together", function()
              local by_name = harness.jwt.sign({sub = "named"}, "namedandnot", {alg = "ES256", kid = "es256", private_key = es})
              assert.equals("named", (jwt.verify(by_name, "namedandnot")).sub)
              local other = harness.jwt.sign({sub = "unnamed"}, "namedandnot", {alg = "RS256", kid = "unknown", private_key = rs})
              assert.equals("unnamed", (jwt.verify(other, "namedandnot")).sub)
              -- an ES256 token whose kid names nothing: the kid-less key is RSA, no candidate
              local lost = harness.jwt.sign({sub = "x"}, "namedandnot", {alg = "ES256", kid = "gone", private_key = es})
              assert.same({nil, "unknown_kid"}, {jwt.verify(lost, "namedandnot")})
            end)
            """#)
        #expect(failures.isEmpty, "\(failures)")
    }

    /// A keyset with a JWKS URL gets its keys from the test, with no network.
    @Test func harnessServesATestJWKS() throws {
        let failures = try run("""
            it("verifies against the test's JWKS", function()
              harness.jwt.jwks("idp", json.encode({keys = {{kty = "oct", kid = "k1", k = "c2VjcmV0LW9uZQ"}}}))
              local token = harness.jwt.sign({sub = "a", exp = harness.clock.now() + 60}, "idp", {kid = "k1"})
              assert.equals("a", jwt.verify(token, "idp").sub)
              harness.jwt.jwks("idp", json.encode({keys = {{kty = "oct", kid = "k2", k = "c2VjcmV0LXR3bw"}}}))
              assert.same({nil, "unknown_kid"}, {jwt.verify(token, "idp")})
            end)
            it("refuses a keyset without a URL", function()
              assert.error_matches(function() harness.jwt.jwks("hs", "{}") end, "has no jwks_url")
            end)
            """)
        #expect(failures.isEmpty, "\(failures)")
    }

    @Test func keysetErrorsNameTheProblem() throws {
        var keyset = Keyset(name: "k", algorithms: ["RS256"], keys: [KeySource(kid: nil, kind: .pem, value: "not a key", file: nil)])
        #expect(throws: KeysetError.self) { try CompiledKeyset(keyset) }
        keyset.keys = [KeySource(kid: nil, kind: .secret, value: "s", file: nil)]
        do {
            _ = try CompiledKeyset(keyset)
            Issue.record("an HMAC secret cannot check RS256")
        } catch {
            #expect(error.description == "keyset k: no key can check RS256 tokens")
        }
        let config = """
            listeners: [ { address: "127.0.0.1:8080" } ]
            upstreams: { app: { targets: [ "127.0.0.1:9" ] } }
            routes: [ { match: { path_prefix: / }, upstream: app } ]
            keysets:
              bad: { algorithms: [none, HS257], secret: x }
            """
        #expect(throws: ConfigError.self) { try ConfigLoader.parse(config, file: "g.yaml") }
        do {
            _ = try ConfigLoader.parse(config, file: "g.yaml")
        } catch {
            let text = "\(error)"
            #expect(text.contains(#"keysets.bad.algorithms[0]: alg "none" is never allowed"#), "\(text)")
            #expect(text.contains(#"keysets.bad.algorithms[1]: unknown algorithm "HS257""#), "\(text)")
        }
    }
}
