import AllocationCounter
import Foundation
import Testing

/// The proxy's hot path allocates nothing per request once warm: kept-alive proxied requests
/// on one connection, counted on the worker's own thread (the test binary's malloc counts).
/// Optimized builds only: a debug build boxes and allocates where the optimizer does not
/// (14 allocations a request here), so `scripts/test` runs this suite again in release.
@Suite(.serialized) struct AllocationTests {
    static var optimized: Bool {
        #if DEBUG
        return false
        #else
        return true
        #endif
    }

    @Test(.enabled(if: optimized, "allocation counts hold for optimized builds (scripts/test runs them)"))
    func keptAliveProxiedRequestsAllocateNothingOnceWarm() async throws {
        try await withGateway(workers: 1) { gw in
            let client = try gw.client()
            for _ in 0..<500 { #expect(try client.request("GET", "/api/warm").status == 200) }
            let before = await gw.gateway.onEachWorker { mg_thread_allocations() }
            let requests = 2000
            for _ in 0..<requests { _ = try client.request("GET", "/api/hello") }
            let after = await gw.gateway.onEachWorker { mg_thread_allocations() }
            let perRequest = Double((after.first ?? 0) - (before.first ?? 0)) / Double(requests)
            print("allocations per kept-alive proxied request on the worker: \(perRequest)")
            // Nothing per request; periodic work (a timer, a log flush) may allocate now and then.
            #expect(perRequest < 0.1, "\(perRequest) allocations per request")
        }
    }

    /// An idle kept-alive connection holds little: no exchange, no buffers, one small timer.
    /// Counted as the usable heap bytes the worker's thread holds per connection, over 400
    /// clients that each sent a request and stay open (the socket's kernel buffers are not
    /// the process's heap; `scripts/bench --idle` measures RSS at 10,000: 0.93 KB, nginx 0.68).
    @Test(.enabled(if: optimized, "heap sizes hold for optimized builds (scripts/test runs them)"))
    func anIdleKeptAliveConnectionHoldsUnderAKilobyte() async throws {
        var limit = rlimit()
        getrlimit(Int32(RLIMIT_NOFILE.rawValue), &limit)
        limit.rlim_cur = max(limit.rlim_cur, min(limit.rlim_max, 4096))
        setrlimit(Int32(RLIMIT_NOFILE.rawValue), &limit)
        try await withGateway(workers: 1) { gw in
            // Warm: the worker's tables and pools at their working size.
            var warm: [RawClient] = []
            for _ in 0..<400 {
                let c = try RawClient(port: gw.port)
                _ = try c.request("GET", "/api/warm")
                warm.append(c)
            }
            warm.removeAll()
            try await Task.sleep(for: .milliseconds(200))
            let before = await gw.gateway.onEachWorker { mg_thread_live_bytes() }
            let count = 400
            var clients: [RawClient] = []
            for _ in 0..<count {
                let c = try RawClient(port: gw.port)
                #expect(try c.request("GET", "/api/idle").status == 200)
                clients.append(c)
            }
            try await Task.sleep(for: .milliseconds(200))
            let after = await gw.gateway.onEachWorker { mg_thread_live_bytes() }
            let perConnection = Double((after.first ?? 0) - (before.first ?? 0)) / Double(count)
            print("heap bytes per idle kept-alive connection on the worker: \(perConnection)")
            #expect(perConnection < 1024, "\(perConnection) bytes a connection")
            withExtendedLifetime(clients) {}
        }
    }
}
