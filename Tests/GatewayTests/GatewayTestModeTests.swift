import MoongateTesting
import Testing

/// `MoongateTesting`: one test, run in-process (the real handlers over in-memory pipes, on a
/// clock the test moves) and live (sockets), with the same stub answering the upstream.
@Suite struct GatewayTestModeTests {
    static let yaml = """
        listeners:
          - name: main
            address: 127.0.0.1:@PORT@
        upstreams:
          app:
            targets: [ "@STUB:app@" ]
            passive_health: { failures: 2, eject: 30s }
        routes:
          - name: api
            match: { path_prefix: /api/ }
            upstream: app
            policy: tag.lua
        """
    static let tag = """
        return { access = function()
          if request.header("X-Deny") then request.respond(403, "denied") end
          request.set_header("X-Tagged", "yes")
        end }
        """
    static let stub: @Sendable (UpstreamCall) -> SimulatedMessage = { call in
        if call.request.target.hasPrefix("/api/fail") { return .failed("unavailable") }
        let tagged = call.request.headers.first { $0.0.lowercased() == "x-tagged" }?.1 ?? "no"
        return SimulatedMessage(
            status: 200, headers: [("Content-Type", "text/plain")],
            body: Array("\(call.upstream) \(call.request.method) \(call.request.target) tagged=\(tagged)".utf8))
    }

    static var test: GatewayTest { GatewayTest(yaml: yaml, scripts: ["tag.lua": tag]) }

    @Test(arguments: [GatewayTestMode.inProcess, .live])
    func theSameTestRunsInProcessAndLive(_ mode: GatewayTestMode) async throws {
        try await Self.test.run(mode, stub: Self.stub) { client in
            let ok = try await client.execute(SimulatedMessage(method: "GET", target: "/api/x?y=1"))
            #expect(ok.status == 200)
            #expect(String(decoding: ok.body, as: UTF8.self) == "app GET /api/x?y=1 tagged=yes")
            #expect(ok.headers.contains { $0.0.lowercased() == "x-request-id" })
            let denied = try await client.execute(SimulatedMessage(method: "GET", target: "/api/x", headers: [("X-Deny", "1")]))
            #expect(denied.status == 403)
            let unrouted = try await client.execute(SimulatedMessage(method: "GET", target: "/nowhere"))
            #expect(unrouted.status == 404)
            let failed = try await client.execute(SimulatedMessage(method: "GET", target: "/api/fail"))
            #expect(failed.status == 502)
        }
    }

    /// In-process, the test owns the gateway's clock: a target ejected by passive health is
    /// back once its eject time has passed, without waiting 30 real seconds.
    @Test func inProcessTheTestMovesTheGatewaysClock() async throws {
        try await Self.test.run(.inProcess, stub: Self.stub) { client in
            for _ in 0..<2 {
                let failed = try await client.execute(SimulatedMessage(method: "GET", target: "/api/fail"))
                #expect(failed.status == 502)
            }
            let ejected = try await client.execute(SimulatedMessage(method: "GET", target: "/api/x"))
            #expect(ejected.status == 503)
            try await client.advance(by: .seconds(31))
            let back = try await client.execute(SimulatedMessage(method: "GET", target: "/api/x"))
            #expect(back.status == 200)
        }
    }
}
