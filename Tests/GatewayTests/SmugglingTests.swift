import Testing

/// Each case is refused with its status and the connection closed, and nothing reaches the
/// upstream that a different parser could read as a second request.
@Suite(.serialized) struct SmugglingTests {
    static let refused: [(String, Int, String)] = [
        ("GET / HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n", 400, "CL and TE"),
        ("POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\nContent-Length: 5\r\n\r\nhello", 400, "duplicate CL"),
        ("POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5, 5\r\n\r\nhello", 400, "CL list"),
        ("POST / HTTP/1.1\r\nHost: a\r\nContent-Length: +5\r\n\r\nhello", 400, "signed CL"),
        ("POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 0x5\r\n\r\nhello", 400, "hex CL"),
        ("GET / HTTP/1.1\r\nHost: a\r\nX-Folded: one\r\n two\r\n\r\n", 400, "obsolete line folding"),
        ("POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\nhello\r\n0\r\n\r\n", 400, "bad chunk size"),
        ("POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhelloXX0\r\n\r\n", 400, "missing chunk CRLF"),
        ("POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\nfffffffffffffffff\r\n", 400, "chunk size overflow"),
        ("GET / HTTP/1.1\r\nHost: a\r\nBad Name: x\r\n\r\n", 400, "space in header name"),
        ("GET / HTTP/1.1\r\nHost: a\r\nX-Bad : x\r\n\r\n", 400, "space before colon"),
        ("GET / HTTP/1.1\r\nHost: a\r\n: x\r\n\r\n", 400, "empty header name"),
        ("GET / HTTP/1.1\r\nHost: a\r\nX-A: b\rc\r\n\r\n", 400, "bare CR in value"),
        ("GET / HTTP/1.1\nHost: a\n\n", 400, "bare LF line ends"),
        ("GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n", 400, "duplicate Host"),
        ("GET / HTTP/1.1\r\n\r\n", 400, "missing Host"),
        ("GET / HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n", 400, "TE in HTTP/1.0"),
        ("POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked, chunked\r\n\r\n0\r\n\r\n", 501, "TE list"),
        ("POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: xchunked\r\n\r\n0\r\n\r\n", 501, "unknown TE"),
        ("POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n", 400, "duplicate TE"),
        ("GET  / HTTP/1.1\r\nHost: a\r\n\r\n", 400, "double space"),
        ("GET / HTTP/2.0\r\nHost: a\r\n\r\n", 505, "HTTP/2 in text"),
        ("GET http://other/ HTTP/1.1\r\nHost: a\r\n\r\n", 400, "absolute-form target"),
    ]

    @Test(arguments: 0..<refused.count)
    func refusesAndCloses(_ index: Int) async throws {
        let (bytes, status, name) = Self.refused[index]
        try await withGateway { gw in
            let before = gw.stats.accepted.withLockedValue { $0 }
            let c = try gw.client()
            try c.send(bytes)
            let r = try c.readResponse()
            #expect(r.status == status, "\(name)")
            #expect(r.header("Connection") == "close", "\(name)")
            #expect(r.json["request_id"] != nil, "\(name): JSON error body")
            #expect(c.isClosedByPeer(), "\(name): connection closed")
            if status != 400 || !name.contains("chunk") {
                #expect(gw.stats.accepted.withLockedValue { $0 } == before, "\(name): nothing reached the upstream")
            }
        }
    }

    @Test func limitsHaveTheirOwnStatuses() async throws {
        try await withGateway { gw in
            func send(_ text: String) throws -> (Int, Bool) {
                let c = try gw.client()
                try c.send(text)
                let r = try c.readResponse()
                return (r.status, c.isClosedByPeer())
            }
            let longURI = "/" + String(repeating: "a", count: 1100)
            #expect(try send("GET \(longURI) HTTP/1.1\r\nHost: a\r\n\r\n") == (414, true))
            let longHeader = "X-Big: " + String(repeating: "b", count: 5000)
            #expect(try send("GET / HTTP/1.1\r\nHost: a\r\n\(longHeader)\r\n\r\n") == (431, true))
            let many = (0..<25).map { "X-H\($0): v\r\n" }.joined()
            #expect(try send("GET / HTTP/1.1\r\nHost: a\r\n\(many)\r\n") == (431, true))
            let body = String(repeating: "z", count: 2000)
            #expect(try send("POST /echo HTTP/1.1\r\nHost: a\r\nContent-Length: 2000\r\n\r\n\(body)") == (413, true))
            let chunked = "7d0\r\n\(body)\r\n0\r\n\r\n"
            #expect(try send("POST /echo HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n\(chunked)") == (413, true))
            // The per-route limit raises it for /upload.
            let c = try gw.client()
            #expect(try c.request("POST", "/upload", body: Array(body.utf8)).json["body_bytes"] as? Int == 2000)
        }
    }

    @Test func headSplitAcrossReadsStillParses() async throws {
        try await withGateway { gw in
            let c = try gw.client()
            let text = "GET /split HTTP/1.1\r\nHost: a\r\nX-One: 1\r\n\r\n"
            for byte in text.utf8 {
                try c.send([byte])
            }
            #expect(try c.readResponse().json["uri"] as? String == "/split")
        }
    }
}
