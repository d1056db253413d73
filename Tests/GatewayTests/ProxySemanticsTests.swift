import Testing

@Suite(.serialized) struct ProxySemanticsTests {
    @Test func removesHopByHopHeaders() async throws {
        try await withGateway { gw in
            let r = try gw.client().request(
                "GET", "/echo",
                headers: [
                    ("Connection", "keep-alive, X-Secret-Hop"), ("X-Secret-Hop", "1"), ("Keep-Alive", "timeout=5"),
                    ("TE", "trailers"), ("Trailer", "X-T"), ("Upgrade", "websocket"), ("Proxy-Authorization", "Basic eA=="),
                    ("Proxy-Connection", "keep-alive"), ("X-Kept", "yes"),
                ])
            #expect(r.status == 200)
            for name in ["Connection", "X-Secret-Hop", "Keep-Alive", "TE", "Trailer", "Upgrade", "Proxy-Authorization", "Proxy-Connection"] {
                #expect(r.echoed(name).isEmpty, "\(name) reached the upstream")
            }
            #expect(r.echoed("X-Kept") == ["yes"])
        }
    }

    @Test func removesHopByHopHeadersFromResponses() async throws {
        try await withGateway { gw in
            let c = try gw.client()
            let r = try c.request("GET", "/hop")
            #expect(r.status == 200)
            #expect(r.text == "hop")
            for name in ["Connection", "X-Hop-Resp", "Keep-Alive", "Proxy-Authenticate", "Upgrade", "Trailer"] {
                #expect(r.header(name) == nil, "\(name) reached the client")
            }
            #expect(r.header("X-Kept-Resp") == "1")
            #expect(try c.request("GET", "/echo").status == 200, "the client connection stays kept alive")
        }
    }

    /// An origin closing idle kept-alive connections (its keep-alive timeout) must not turn
    /// into failed requests: the pool drops closed connections and dials anew.
    @Test func survivesUpstreamClosingIdleConnections() async throws {
        try await withGateway(workers: 1) { gw in
            let c = try gw.client()
            for _ in 0..<5 {
                #expect(try c.request("GET", "/linger-close/20").status == 200)
                try await Task.sleep(for: .milliseconds(60))
            }
            #expect(try c.request("GET", "/echo").status == 200)
        }
    }

    /// The origin drops the request sent on a reused connection: an idempotent request is sent
    /// again on a new connection; a POST is not (it may have been acted on) and gets a 502.
    @Test func retriesOnlyIdempotentRequestsOnAStaleConnection() async throws {
        try await withGateway(workers: 1) { gw in
            let c = try gw.client()
            #expect(try c.request("GET", "/stale-next").status == 200)
            #expect(try c.request("GET", "/echo").status == 200, "retried on a fresh connection")
            #expect(try c.request("GET", "/stale-next").status == 200)
            let put = try c.request("PUT", "/echo", body: Array("small body".utf8))
            #expect(put.status == 200, "a small idempotent PUT is resent whole")
            #expect(put.json["body_bytes"] as? Int == 10)
            #expect(try c.request("GET", "/stale-next").status == 200)
            let post = try c.request("POST", "/echo", body: [])
            #expect(post.status == 502)
            #expect(post.json["error"] as? String == "upstream closed the connection")
        }
    }

    @Test func setsForwardedHeaders() async throws {
        try await withGateway { gw in
            let c = try gw.client()
            let r = try c.request("GET", "/echo", headers: [("X-Forwarded-Proto", "https"), ("X-Forwarded-Host", "evil")])
            #expect(r.echoed("X-Forwarded-For") == ["127.0.0.1"])
            #expect(r.echoed("X-Forwarded-Proto") == ["http"], "a client must not choose the forwarded proto")
            #expect(r.echoed("X-Forwarded-Host") == ["localhost"])
            let chained = try c.request("GET", "/echo", headers: [("X-Forwarded-For", "203.0.113.7")])
            #expect(chained.echoed("X-Forwarded-For") == ["203.0.113.7, 127.0.0.1"])
        }
    }

    @Test func keepsOrGeneratesRequestID() async throws {
        try await withGateway { gw in
            let c = try gw.client()
            let kept = try c.request("GET", "/echo", headers: [("X-Request-Id", "req-123")])
            #expect(kept.echoed("X-Request-Id") == ["req-123"])
            #expect(kept.header("X-Request-Id") == "req-123")
            let made = try c.request("GET", "/echo")
            let id = try #require(made.echoed("X-Request-Id").first)
            #expect(id.count == 32)
            #expect(made.header("X-Request-Id") == id, "the client sees the id the upstream got")
            let other = try c.request("GET", "/echo")
            #expect(other.echoed("X-Request-Id").first != id)
            let unsafe = try c.request("GET", "/echo", headers: [("X-Request-Id", "a\"b")])
            #expect(unsafe.echoed("X-Request-Id").first?.count == 32, "an id that is unsafe to echo is replaced")
        }
    }

    @Test func passesOrRewritesHost() async throws {
        try await withGateway { gw in
            let c = try gw.client()
            #expect(try c.request("GET", "/echo").echoed("Host") == ["localhost"])
            #expect(try c.request("GET", "/target-host").echoed("Host") == ["127.0.0.1:\(gw.echoPort)"])
            #expect(try c.request("GET", "/fixed-host").echoed("Host") == ["internal.example"])
        }
    }

    @Test func stripsRoutePrefixAndKeepsQuery() async throws {
        try await withGateway { gw in
            let c = try gw.client()
            #expect(try c.request("GET", "/api/users/7?x=1&y=2").json["uri"] as? String == "/users/7?x=1&y=2")
            #expect(try c.request("GET", "/other/path?q").json["uri"] as? String == "/other/path?q")
        }
    }

    @Test func matchesMethodsAndHosts() async throws {
        try await withGateway { gw in
            let c = try gw.client()
            #expect(try c.request("GET", "/get-only").status == 200)
            // POST /get-only falls through to the default route: the method restricts the route.
            let post = try c.request("POST", "/get-only", body: [])
            #expect(post.json["method"] as? String == "POST")
            let vhost = try c.request("GET", "/vhost", headers: [])  // Host: localhost
            #expect(vhost.status == 200)
            let raw = try gw.client()
            try raw.send("GET /vhost HTTP/1.1\r\nHost: API.example.com:8080\r\n\r\n")
            #expect(try raw.readResponse().status == 200)
        }
    }

    @Test func answersNoRouteWithJSON404() async throws {
        let yaml = TestGateway.defaultConfig.replacingOccurrences(of: "match: { path_prefix: / }", with: "match: { path: /exact }")
        try await withGateway(yaml) { gw in
            let r = try gw.client().request("GET", "/nowhere")
            #expect(r.status == 404)
            #expect(r.header("Content-Type") == "application/json")
            #expect(r.json["error"] as? String == "no route")
            #expect((r.json["request_id"] as? String)?.count == 32)
            // A body that came with it is dropped, and the connection stays usable.
            let c = try gw.client()
            #expect(try c.request("POST", "/nowhere", body: Array("some body".utf8)).status == 404)
            #expect(try c.request("GET", "/exact").status == 200)
        }
    }

    @Test func refusesDotSegments() async throws {
        try await withGateway { gw in
            for path in ["/api/../admin", "/api/%2e%2e/admin", "/a/./b", "/x/%2E./y"] {
                let c = try gw.client()
                #expect(try c.request("GET", path).status == 400, "\(path)")
            }
            #expect(try gw.client().request("GET", "/a/..b/c...").status == 200)
        }
    }

    @Test func servesPipelinedRequestsInOrder() async throws {
        try await withGateway { gw in
            let c = try gw.client()
            try c.send("GET /one HTTP/1.1\r\nHost: a\r\n\r\nGET /two HTTP/1.1\r\nHost: a\r\n\r\nGET /three HTTP/1.1\r\nHost: a\r\n\r\n")
            for path in ["/one", "/two", "/three"] {
                #expect(try c.readResponse().json["uri"] as? String == path)
            }
        }
    }

    @Test func speaksHTTP10() async throws {
        try await withGateway { gw in
            let c = try gw.client()
            try c.send("GET /bytes/5?chunked=1 HTTP/1.0\r\n\r\n")
            let r = try c.readResponse()
            #expect(r.status == 200)
            #expect(r.text == "xxxxx")
            #expect(r.header("Transfer-Encoding") == nil, "an HTTP/1.0 client cannot read chunked")
            #expect(c.isClosedByPeer())
        }
    }

    @Test func handlesHEADAndNoBodyStatuses() async throws {
        try await withGateway { gw in
            let c = try gw.client()
            let head = try c.request("HEAD", "/bytes/100")
            #expect(head.status == 200)
            #expect(head.header("Content-Length") == "100")
            #expect(try c.request("GET", "/status/204").status == 204)
            #expect(try c.request("GET", "/echo").status == 200, "the connection is still in step")
        }
    }
}
