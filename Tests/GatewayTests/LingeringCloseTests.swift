import Foundation
import Testing

/// A request refused while its bytes are still arriving gets its answer, not a reset: the
/// gateway sends the answer, shuts its write side and drains what the client still sends
/// (RFC 9112 §9.6, nginx's lingering close). Tried as a client with raw sockets would.
@Suite(.serialized) struct LingeringCloseTests {
    /// How many of `tries` clients sending `bytes` in one go read a response with `status`.
    static func answered(_ gw: TestGateway, _ bytes: [UInt8], status: Int, tries: Int) -> Int {
        var got = 0
        for _ in 0..<tries {
            guard let client = try? gw.client(timeout: 5) else { continue }
            // Sent as a network delivers it, in pieces: the gateway refuses the request while
            // the rest is still coming. A reset while sending is what the lingering close
            // prevents (the client's send fails, and the answer is lost with it).
            var offset = 0, failed = false
            while offset < bytes.count {
                let end = min(offset + 8192, bytes.count)
                if (try? client.send(Array(bytes[offset..<end]))) == nil {
                    failed = true
                    break
                }
                offset = end
                usleep(500)
            }
            if failed { continue }
            if let response = try? client.readResponse(), response.status == status, client.isClosedByPeer() { got += 1 }
        }
        return got
    }

    @Test func anOversizedHeadGetsIts431() async throws {
        try await withGateway(workers: 1) { gw in
            let head = "GET / HTTP/1.1\r\nHost: a\r\nX-Big: " + String(repeating: "x", count: 100 * 1024) + "\r\n\r\n"
            let got = Self.answered(gw, Array(head.utf8), status: 431, tries: 30)
            #expect(got == 30, "\(got) of 30 clients read their 431")
        }
    }

    @Test func anOversizedBodyGetsIts413() async throws {
        try await withGateway(workers: 1) { gw in
            let body = [UInt8](repeating: 0x61, count: 512 * 1024)
            let request = Array("POST /api/x HTTP/1.1\r\nHost: a\r\nContent-Length: \(body.count)\r\n\r\n".utf8) + body
            let got = Self.answered(gw, request, status: 413, tries: 30)
            #expect(got == 30, "\(got) of 30 clients read their 413")
        }
    }

    /// The drain is bounded: a client that keeps sending is cut off after the window.
    @Test func theDrainEnds() async throws {
        try await withGateway(workers: 1) { gw in
            let client = try gw.client(timeout: 10)
            try client.send("GET / HTTP/1.1\r\nHost: a\r\nX-Big: " + String(repeating: "x", count: 8 * 1024) + "\r\n\r\n")
            let response = try client.readResponse()
            #expect(response.status == 431)
            let started = Date()
            var sent = 0
            let chunk = [UInt8](repeating: 0x78, count: 64 * 1024)
            while Date().timeIntervalSince(started) < 15 {
                guard (try? client.send(chunk)) != nil else { break }
                sent += chunk.count
            }
            #expect(Date().timeIntervalSince(started) < 10, "the gateway drained for ever (\(sent) bytes)")
        }
    }
}

/// `limits.max_connections` bounds the client connections a worker holds: past it, accepting
/// pauses (the kernel queues the connection), and resumes when one closes.
@Suite(.serialized) struct ConnectionLimitTests {
    @Test func acceptingPausesAtTheLimitAndResumes() async throws {
        let yaml = TestGateway.defaultConfig.replacingOccurrences(of: "limits:\n", with: "limits:\n  max_connections: 4\n")
        try await withGateway(yaml, workers: 1) { gw in
            var held = try (0..<4).map { _ in try gw.client(timeout: 5) }
            for c in held { #expect(try c.request("GET", "/api/x").status == 200) }
            // The fifth connects (the kernel's queue) but is not served while four are open.
            let waiting = try gw.client(timeout: 0.5)
            try waiting.send("GET /api/x HTTP/1.1\r\nHost: a\r\n\r\n")
            #expect(throws: (any Error).self) { _ = try waiting.readResponse() }
            held.removeFirst()  // closes one: the waiting connection is accepted and served
            let answer = try waiting.readResponse()
            #expect(answer.status == 200)
            #expect(held.count == 3)
        }
    }
}
