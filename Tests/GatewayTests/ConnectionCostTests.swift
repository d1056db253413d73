import Foundation
import TestSupport
import Testing

/// A connection costs what it holds: a request's state (its `Exchange`) is taken from the
/// worker when a head arrives and given back whole when the request ends, so idle kept-alive
/// connections and half-sent heads hold none, and a warm worker reuses them.
/// `scripts/bench --idle` measures the bytes this saves.
@Suite struct ConnectionCostTests {
    @Test func idleKeptAliveConnectionsHoldNoExchange() async throws {
        try await withGateway(workers: 1) { gw in
            var clients: [RawClient] = []
            for i in 0..<20 {
                let client = try gw.client()
                #expect(try client.request("GET", "/idle/\(i)").status == 200)
                clients.append(client)
            }
            let counts = await gw.gateway.exchangeCounts()
            #expect(await gw.gateway.connectionCounts().clients == 20)
            #expect(counts.inUse == 0, "idle connections hold \(counts.inUse) exchanges")
            // One after another: the same exchange served every request.
            #expect(counts.spare == 1, "\(counts.spare) spare exchanges after 20 sequential requests")
            // Kept alive: each connection still serves.
            for client in clients { #expect(try client.request("GET", "/again").status == 200) }
            #expect(await gw.gateway.exchangeCounts().inUse == 0)
        }
    }

    @Test func halfReceivedHeadsHoldNoExchange() async throws {
        // The request's and the upstream's timeouts must outlast a loaded machine's slow
        // polling below. An explicit free port: see TLSListenerTests' handshake bound test.
        let yaml = TestGateway.defaultConfig.replacingOccurrences(of: "read_timeout: 500ms", with: "read_timeout: 60s")
            .replacingOccurrences(of: "request: 5s", with: "request: 60s")
            .replacingOccurrences(of: "@PORT@", with: String(try freeLoopbackPort()))
        try await withGateway(yaml, workers: 1) { gw in
            var clients: [RawClient] = []
            for _ in 0..<10 {
                let client = try gw.client()
                try client.send("GET /half HTTP/1.1\r\nHost: a\r\nX-Pad: " + String(repeating: "a", count: 500))
                clients.append(client)
            }
            var connected = 0
            for _ in 0..<50 where connected < 10 {
                try await Task.sleep(for: .milliseconds(20))
                connected = await gw.gateway.connectionCounts().clients
            }
            #expect(connected == 10)
            #expect(await gw.gateway.exchangeCounts().inUse == 0)
            // The rest of a head arrives: the request starts, is served, and gives its exchange back.
            try clients[0].send("\r\n\r\n")
            let response = try clients[0].readResponse()
            #expect(response.status == 200, "\(response.status) \(response.text)")
            #expect(await gw.gateway.exchangeCounts().inUse == 0)
        }
    }

    /// A request whose body is still coming holds one exchange; a client that leaves in the
    /// middle of it gives it back (the lifecycle's "client gone" during the upstream wait).
    @Test func aClientThatLeavesMidBodyGivesItsExchangeBack() async throws {
        // Timeouts long enough that only the client's leaving can end the request, however
        // slowly a loaded machine polls.
        let yaml = TestGateway.defaultConfig
            .replacingOccurrences(of: "read_timeout: 500ms", with: "read_timeout: 60s")
            .replacingOccurrences(of: "request: 5s", with: "request: 60s")
        try await withGateway(yaml, workers: 1) { gw in
            var client: RawClient? = try gw.client()
            try client?.send("POST /upload HTTP/1.1\r\nHost: a\r\nContent-Length: 100000\r\n\r\n" + String(repeating: "x", count: 100))
            var inUse = 0
            for _ in 0..<250 where inUse != 1 {
                try await Task.sleep(for: .milliseconds(20))
                inUse = await gw.gateway.exchangeCounts().inUse
            }
            #expect(inUse == 1, "a request in progress holds \(inUse) exchanges")
            client = nil  // the client goes away with 99,900 bytes unsent
            for _ in 0..<250 where inUse != 0 {
                try await Task.sleep(for: .milliseconds(20))
                inUse = await gw.gateway.exchangeCounts().inUse
            }
            #expect(inUse == 0, "\(inUse) exchanges still held after the client left")
            #expect(await gw.gateway.connectionCounts().clients == 0)
            let next = try gw.client()
            #expect(try next.request("GET", "/after").status == 200)
            #expect(await gw.gateway.exchangeCounts().spare >= 1)
        }
    }
}
