import Config
import Foundation
import Harness
import Testing

/// `harness.oauth2`: tests decide what the introspection endpoint says, with no server.
@Suite struct IntrospectionHarnessTests {
    @Test func stubbedAnswersAndFailures() throws {
        let folder = FileManager.default.temporaryDirectory.appendingPathComponent("moongate-oauth2-\(UUID().uuidString)").path
        try FileManager.default.createDirectory(atPath: folder + "/policies", withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(atPath: folder) }
        try """
        listeners: [{ name: test, address: "127.0.0.1:0" }]
        introspection:
          idp: { url: "http://127.0.0.1:1/introspect", client_id: gw, client_secret: s }
        upstreams:
          echo: { targets: ["127.0.0.1:1"] }
        routes:
          - { name: all, match: { path_prefix: / }, upstream: echo, policy: auth.lua }
        """.write(toFile: folder + "/gateway.yaml", atomically: true, encoding: .utf8)
        try """
        return { access = function()
          local answer, reason = oauth2.introspect(request.header("X-Token"), "idp")
          if not answer then request.respond(401, reason) end
          request.set_header("X-User", answer.sub)
        end }
        """.write(toFile: folder + "/policies/auth.lua", atomically: true, encoding: .utf8)
        try """
        describe("introspection", function()
          local function get(token) return harness.request{path = "/", headers = {["X-Token"] = token}} end
          it("passes an active token", function()
            harness.oauth2.answer("idp", "t1", {active = true, sub = "ann", exp = harness.clock.now() + 60})
            assert.equals("ann", get("t1").upstream.headers["x-user"])
          end)
          it("refuses what the endpoint does not know", function()
            assert.equals("inactive", get("t1").body)
          end)
          it("keeps an answer until exp, then asks again", function()
            harness.oauth2.answer("idp", "t2", {active = true, sub = "bob", exp = harness.clock.now() + 60})
            assert.equals(200, get("t2").status)
            harness.oauth2.answer("idp", "t2", nil)
            assert.equals(200, get("t2").status)
            harness.clock.advance(61)
            assert.equals("inactive", get("t2").body)
          end)
          it("reports the endpoint failing", function()
            harness.oauth2.fail("idp", "timeout")
            assert.equals("timeout", get("t3").body)
            harness.oauth2.fail("idp", "unavailable")
            assert.equals("unavailable", get("t3").body)
          end)
        end)
        """.write(toFile: folder + "/policies/auth_test.lua", atomically: true, encoding: .utf8)
        let config = try ConfigLoader.load(path: folder + "/gateway.yaml")
        let results = try TestRunner.forGateway(config: config).run(TestRunner.discover([folder + "/policies"]))
        let totals = TestReport.totals(results)
        #expect(totals.ok && totals.passed == 4, "\(TestReport.text(results))")
    }
}
