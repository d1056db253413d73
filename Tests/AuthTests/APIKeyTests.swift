import Config
import Foundation
import Testing

@testable import Auth
@testable import Harness

/// `apikey.verify`: keys stored as SHA-256 digests, inline or in a file, with who they
/// belong to; checked through a policy as the gateway runs it.
@Suite struct APIKeyTests {
    static func sha256(_ key: String) -> String {
        var digest = [UInt8](repeating: 0, count: 32)
        let bytes = Array(key.utf8)
        mg_sha256_swift(bytes, &digest)
        return digest.map { String(format: "%02x", $0) }.joined()
    }

    @Test func keysFromConfigAndFile() throws {
        let folder = FileManager.default.temporaryDirectory.appendingPathComponent("moongate-apikey-\(UUID().uuidString)").path
        try FileManager.default.createDirectory(atPath: folder + "/policies", withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(atPath: folder) }
        try "# partners\n\(Self.sha256("file-key")) globex billing:read\n".write(toFile: folder + "/keys.txt", atomically: true, encoding: .utf8)
        try """
        listeners: [ { address: "127.0.0.1:8080" } ]
        upstreams: { app: { targets: [ "127.0.0.1:9" ] } }
        routes: [ { match: { path_prefix: / }, upstream: app, policy: key.lua } ]
        apikeys:
          partners:
            keys:
              - { sha256: \(Self.sha256("inline-key")), consumer: acme, scopes: [orders:read, orders:write] }
            keys_file: keys.txt
        """.write(toFile: folder + "/gateway.yaml", atomically: true, encoding: .utf8)
        try """
        return { access = function()
          local who, reason = apikey.verify(request.header("X-Api-Key"), "partners")
          if not who then request.respond(401, reason) end
          request.set_header("X-Consumer", who.consumer)
          request.set_header("X-Scopes", table.concat(who.scopes, " "))
        end }
        """.write(toFile: folder + "/policies/key.lua", atomically: true, encoding: .utf8)
        try """
        local function get(key) return harness.request{path = "/", headers = {["X-Api-Key"] = key}} end
        it("finds an inline key and its scopes", function()
          local res = get("inline-key")
          assert.equals("acme", res.upstream.headers["x-consumer"])
          assert.equals("orders:read orders:write", res.upstream.headers["x-scopes"])
        end)
        it("finds a key from the file", function()
          assert.equals("globex", get("file-key").upstream.headers["x-consumer"])
        end)
        it("refuses unknown and missing keys", function()
          assert.equals("unknown", get("guess").body)
          assert.equals("missing", harness.request{path = "/"}.body)
        end)
        it("names an unknown set", function()
          assert.error_matches(function() apikey.verify("k", "nope") end, 'no apikeys set "nope"')
        end)
        """.write(toFile: folder + "/policies/key_test.lua", atomically: true, encoding: .utf8)
        let config = try ConfigLoader.load(path: folder + "/gateway.yaml")
        let results = TestRunner(config: config, modules: try AuthModules.make(config)).run(TestRunner.discover([folder + "/policies"]))
        let totals = TestReport.totals(results)
        #expect(totals.ok && totals.passed == 4, "\(TestReport.text(results))")
    }

    @Test func badDigestsAreConfigErrors() {
        #expect(throws: ConfigError.self) {
            try ConfigLoader.parse(
                """
                listeners: [ { address: "127.0.0.1:8080" } ]
                upstreams: { app: { targets: [ "127.0.0.1:9" ] } }
                routes: [ { match: { path_prefix: / }, upstream: app } ]
                apikeys: { p: { keys: [ { sha256: "plaintext-key", consumer: a } ] } }
                """, file: "g.yaml")
        }
    }
}

/// SHA-256 for the test's fixtures (through the same OpenSSL call the module uses).
func mg_sha256_swift(_ bytes: [UInt8], _ out: inout [UInt8]) {
    CompiledAPIKeys.sha256(bytes, &out)
}
