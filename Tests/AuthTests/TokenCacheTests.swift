import CJOSE
import Config
import Foundation
import Scripting
import Testing

@testable import Auth
@testable import Harness

/// The cache of verified tokens: a repeated token skips the signature check, still expires
/// with the clock, and the cache stays within its bound.
@Suite struct TokenCacheTests {
    final class Host: ScriptHost {
        func scriptLog(_ level: Logger.Level, _ message: String, location: String?) {}
    }

    static func token(_ claims: String, secret: String) -> String {
        let input = Base64URL.encode(Array(#"{"alg":"HS256"}"#.utf8)) + "." + Base64URL.encode(Array(claims.utf8))
        var mac = [UInt8](repeating: 0, count: 64)
        let n = Array(input.utf8).withUnsafeBufferPointer { p in Array(secret.utf8).withUnsafeBufferPointer { s in
            mg_hmac(MG_ALG_HS256, s.baseAddress, s.count, p.baseAddress, p.count, &mac)
        } }
        return input + "." + Base64URL.encode(Array(mac[0..<n]))
    }

    @Test func repeatedTokensSkipTheSignatureCheckUntilTheyExpire() throws {
        var keyset = Keyset(name: "c", algorithms: ["HS256"], keys: [KeySource(kid: nil, kind: .secret, value: "s3cret", file: nil)])
        keyset.cacheEntries = 2
        let keysets = try Keysets([keyset])
        let t1 = Self.token(#"{"sub":"a","exp":1700000060}"#, secret: "s3cret")
        let t2 = Self.token(#"{"sub":"b","exp":1700000060}"#, secret: "s3cret")
        let t3 = Self.token(#"{"sub":"c","exp":1700000060}"#, secret: "s3cret")
        let forged = Self.token(#"{"sub":"a","exp":1700000060}"#, secret: "wrong")
        let source = """
            return { access = function()
              for i = 1, 3 do assert(jwt.verify("\(t1)", "c").sub == "a") end
              assert(jwt.verify("\(t2)", "c").sub == "b")
              assert(jwt.verify("\(t3)", "c").sub == "c")
              assert(select(2, jwt.verify("\(forged)", "c")) == "bad_signature")
            end, log = function()
              assert(select(2, jwt.verify("\(t3)", "c")) == "expired")
            end }
            """
        let clock = FakeClock()
        var settings = ScriptsConfig()
        settings.maxStates = 1
        let program = ScriptProgram(
            scripts: ScriptSet(directory: "t", files: [ScriptFile(module: "p", path: "t/p.lua", source: Array(source.utf8))]), policies: ["p"],
            modules: [JWTModule(keysets: keysets)], settings: settings, clock: clock)
        let state = try LuaState(program: program)
        let host = Host()
        state.beginRequest(host: host)
        let access = state.run(.access, policy: 0, budget: ScriptBudget(), current: Unmanaged.passUnretained(host).toOpaque())
        guard case .done = access else {
            Issue.record("access: \(access)")
            return
        }
        #expect(keysets["c"]!.cacheHits == 2, "t1 twice from the cache")
        clock.advance(61)
        let log = state.run(.log, policy: 0, budget: ScriptBudget(), current: Unmanaged.passUnretained(host).toOpaque())
        guard case .done = log else {
            Issue.record("log: \(log)")
            return
        }
        #expect(keysets["c"]!.cacheHits == 2, "an expired entry is not a hit")
    }
}

import Logging
