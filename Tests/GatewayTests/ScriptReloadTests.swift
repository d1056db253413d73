import Foundation
import Testing

/// Script reloads: a good change takes effect, a broken one changes nothing and is reported
/// with `file:line`, and neither loses a request under load.
@Suite(.serialized) struct ScriptReloadTests {
    static let config = """
        listeners:
          - name: test
            address: 127.0.0.1:@PORT@
        upstreams:
          echo:
            targets: [ "@ECHO@" ]
        routes:
          - name: tagged
            match: { path_prefix: / }
            upstream: echo
            policy: tag.lua
        """

    static func tag(_ version: String) -> String {
        """
        local helper = require("lib.helper")
        return {
          access = function(ctx)
            request.set_header("X-Version", helper.name("\(version)"))
          end,
        }
        """
    }

    static let helper = "return { name = function(v) return 'v' .. v end }"

    func version(_ gw: TestGateway) throws -> String? {
        try gw.client().request("GET", "/echo").echoed("X-Version").first
    }

    @Test func brokenScriptsKeepTheLastGoodGeneration() async throws {
        try await withGateway(Self.config, scripts: ["tag.lua": Self.tag("1"), "lib/helper.lua": Self.helper]) { gw in
            #expect(try version(gw) == "v1")
            let broken: [(String, String, String)] = [
                ("tag.lua", "return {\n  access = function(ctx)\n    request.set_header(\n  end,\n}", "policies/tag.lua:4: unexpected symbol near 'end'"),
                ("tag.lua", "local x = 1\nerror('missing setting')\nreturn {}", "policies/tag.lua:2: missing setting"),
                ("tag.lua", "return { log = 42 }", "policies/tag.lua: phase \"log\" must be a function, not a number"),
                ("tag.lua", "return {}", "policies/tag.lua: the policy defines no phase (expected access, response or log)"),
                ("lib/helper.lua", "return {\nname = function(v) return v end,\n}}", "policies/lib/helper.lua:3: <eof> expected near '}'"),
            ]
            for (file, source, expected) in broken {
                try gw.writeScript(file, source)
                let result = await gw.gateway.reload()
                #expect(!result.succeeded, "\(file): \(source)")
                #expect(result.errors.contains { $0.hasSuffix(expected) }, "\(result.errors)")
                #expect(try version(gw) == "v1", "the last good generation keeps serving")
                try gw.writeScript("tag.lua", Self.tag("1"))
                try gw.writeScript("lib/helper.lua", Self.helper)
            }
            try gw.writeScript("tag.lua", Self.tag("2"))
            #expect(await gw.gateway.reload().succeeded)
            #expect(try version(gw) == "v2")
        }
    }

    /// Clients hammer a policy route while its script is replaced by good and broken
    /// versions: every request is answered 200, by one version or the other.
    @Test func reloadsUnderLoadWithoutFailedRequests() async throws {
        try await withGateway(Self.config, scripts: ["tag.lua": Self.tag("0"), "lib/helper.lua": Self.helper]) { gw in
            let load = Load(port: gw.port, clients: 6, target: "/echo") { $0.status == 200 && $0.echoed("X-Version").first?.hasPrefix("v") == true }
            for round in 1...6 {
                try await Task.sleep(for: .milliseconds(100))
                try gw.writeScript("tag.lua", round % 2 == 0 ? "return {" : Self.tag("\(round)"))
                _ = await gw.gateway.reload()
            }
            try await Task.sleep(for: .milliseconds(200))
            try await load.stop()
            #expect(load.failures.value == 0)
            #expect(load.served.value > 100)
            #expect(try version(gw) == "v5")
        }
    }
}
