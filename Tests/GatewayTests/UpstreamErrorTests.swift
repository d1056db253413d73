import Foundation
import Testing

@Suite(.serialized) struct UpstreamErrorTests {
    @Test func refusedUpstreamIs502WithJSON() async throws {
        try await withGateway { gw in
            let started = Date()
            let c = try gw.client()
            let r = try c.request("GET", "/dead", headers: [("X-Request-Id", "r-502")])
            #expect(r.status == 502)
            #expect(r.header("Content-Type") == "application/json")
            #expect(r.json["error"] as? String == "upstream unreachable")
            #expect(r.json["request_id"] as? String == "r-502")
            #expect(Date().timeIntervalSince(started) < 2)
            #expect(try c.request("GET", "/echo").status == 200, "the client connection survives a 502")
        }
    }

    @Test func upstreamClosingWithoutAnswerIs502() async throws {
        try await withGateway { gw in
            let r = try gw.client().request("GET", "/close")
            #expect(r.status == 502)
            #expect(r.json["error"] as? String == "upstream closed the connection")
        }
    }

    @Test func slowUpstreamIs504AfterReadTimeout() async throws {
        try await withGateway { gw in
            let started = Date()
            let r = try gw.client().request("GET", "/delay/3000")
            let elapsed = Date().timeIntervalSince(started)
            #expect(r.status == 504)
            #expect(r.json["error"] as? String == "upstream timeout")
            #expect(elapsed > 0.4 && elapsed < 2, "read_timeout is 500ms, took \(elapsed)s")
        }
    }

    @Test func totalRequestTimeoutIs504() async throws {
        let yaml = TestGateway.defaultConfig
            .replacingOccurrences(of: "request: 5s", with: "request: 300ms")
            .replacingOccurrences(of: "read_timeout: 500ms", with: "read_timeout: 10s")
        try await withGateway(yaml) { gw in
            let started = Date()
            let r = try gw.client().request("GET", "/delay/3000")
            #expect(r.status == 504)
            #expect(r.json["error"] as? String == "request timeout")
            #expect(Date().timeIntervalSince(started) < 2)
        }
    }

    @Test func idleClientIsClosed() async throws {
        let yaml = TestGateway.defaultConfig.replacingOccurrences(of: "request: 5s", with: "request: 5s\n  client_idle: 300ms")
        try await withGateway(yaml) { gw in
            let c = try gw.client(timeout: 3)
            #expect(try c.request("GET", "/echo").status == 200)
            let started = Date()
            #expect(c.isClosedByPeer())
            #expect(Date().timeIntervalSince(started) < 2)
        }
    }

    @Test func slowHeadIs408() async throws {
        let yaml = TestGateway.defaultConfig.replacingOccurrences(of: "request: 5s", with: "request: 300ms")
        try await withGateway(yaml) { gw in
            let c = try gw.client(timeout: 3)
            try c.send("GET / HTTP/1.1\r\nHost: a\r\n")
            #expect(try c.readResponse().status == 408)
        }
    }
}

@Suite(.serialized) struct ConnectTimeoutTests {
    /// A loopback listener that never accepts and whose accept queue is full drops new SYNs,
    /// so connecting to it times out: a real connect timeout without leaving the machine.
    @Test func connectTimeoutIs504() async throws {
        let (fd, port) = RawClient.boundSocket(listenBacklog: 0)
        defer { close(fd) }
        // Fill the accept queue.
        var fillers: [RawClient] = []
        for _ in 0..<4 { if let c = try? RawClient(port: port, timeout: 0.3) { fillers.append(c) } }

        let yaml = TestGateway.defaultConfig
            .replacingOccurrences(of: "  dead:\n", with: "  blackhole:\n    targets: [ \"127.0.0.1:\(port)\" ]\n    connect_timeout: 300ms\n  dead:\n")
            .replacingOccurrences(of: "  - name: dead\n", with: "  - name: blackhole\n    match: { path_prefix: /blackhole }\n    upstream: blackhole\n  - name: dead\n")
        try await withGateway(yaml) { gw in
            let started = Date()
            let r = try gw.client().request("GET", "/blackhole")
            let elapsed = Date().timeIntervalSince(started)
            #expect(r.status == 504)
            #expect(r.json["error"] as? String == "upstream connect timeout")
            #expect(elapsed > 0.25 && elapsed < 2, "connect_timeout is 300ms, took \(elapsed)s")
        }
        _ = fillers
    }
}
