import Foundation
import Testing

@Suite(.serialized) struct StreamingTests {
    /// FNV-1a, as the echo upstream computes it.
    static func checksum(_ chunks: [[UInt8]]) -> String {
        var value: UInt64 = 0xcbf2_9ce4_8422_2325
        for chunk in chunks {
            for b in chunk {
                value ^= UInt64(b)
                value = value &* 0x100_0000_01b3
            }
        }
        return String(value, radix: 16)
    }

    @Test func chunkedRequestBodyIsReframed() async throws {
        try await withGateway { gw in
            let c = try gw.client()
            try c.send("POST /upload HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n")
            try c.send("5;ext=1\r\nhello\r\n")
            try c.send("6\r\n world\r\n0\r\nX-Trailer: t\r\n\r\n")
            let r = try c.readResponse()
            #expect(r.json["body_bytes"] as? Int == 11)
            #expect(r.json["body_checksum"] as? String == Self.checksum([Array("hello world".utf8)]))
            #expect(r.echoed("Transfer-Encoding") == ["chunked"])
            #expect(try c.request("GET", "/echo").status == 200)
        }
    }

    @Test func chunkedAndCloseDelimitedResponsesReachTheClient() async throws {
        try await withGateway { gw in
            let c = try gw.client()
            let chunked = try c.request("GET", "/bytes/200000?chunked=1")
            #expect(chunked.body.count == 200_000)
            #expect(chunked.header("Transfer-Encoding") == "chunked")
            let sized = try c.request("GET", "/bytes/200000")
            #expect(sized.body.count == 200_000)
            #expect(sized.header("Content-Length") == "200000")
        }
    }

    /// 100 MB up and 100 MB down through one connection, checked byte for byte by checksum.
    /// (Memory staying flat is measured on a separate process in `ProcessTests`.)
    @Test func streams100MBEachWay() async throws {
        try await withGateway { gw in
            let size = 100 * 1024 * 1024
            let c = try gw.client(timeout: 60)
            try c.send("POST /upload HTTP/1.1\r\nHost: a\r\nContent-Length: \(size)\r\n\r\n")
            var block = [UInt8](repeating: 0, count: 1 << 20)
            for i in block.indices { block[i] = UInt8(truncatingIfNeeded: i &* 31) }
            for _ in 0..<(size >> 20) { try c.send(block) }
            let up = try c.readResponse()
            #expect(up.json["body_bytes"] as? Int == size)
            #expect(up.json["body_checksum"] as? String == Self.checksum(Array(repeating: block, count: size >> 20)))
            let down = try c.request("GET", "/bytes/\(size)?chunked=1", headers: [])
            #expect(down.body.count == size)
        }
    }

    @Test func keepAliveReusesABoundedSetOfUpstreamConnections() async throws {
        try await withGateway(workers: 2) { gw in
            let clients = 64, perClient = 20
            let failures = LockedCounter()
            DispatchQueue.concurrentPerform(iterations: clients) { _ in
                do {
                    let c = try gw.client()
                    for _ in 0..<perClient where try c.request("GET", "/hello").status != 200 { failures.add() }
                } catch {
                    failures.add()
                }
            }
            #expect(failures.value == 0)
            let accepted = gw.stats.accepted.withLockedValue { $0 }
            // At most one upstream connection per concurrent client (64), far below 1,280 requests.
            #expect(accepted <= clients, "upstream saw \(accepted) connections for \(clients * perClient) requests")
            let (_, open) = await gw.gateway.connectionCounts()
            #expect(open > 0 && open <= clients, "the gateway holds \(open) upstream connections")
            let again = gw.stats.accepted.withLockedValue { $0 }
            let c = try gw.client()
            for _ in 0..<50 { _ = try c.request("GET", "/hello") }
            #expect(gw.stats.accepted.withLockedValue { $0 } == again, "sequential requests reuse pooled connections")
        }
    }
}

final class LockedCounter: @unchecked Sendable {
    private let lock = NSLock()
    private var count = 0
    func add(_ n: Int = 1) { lock.withLock { count += n } }
    var value: Int { lock.withLock { count } }
}
