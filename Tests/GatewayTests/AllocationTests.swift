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
}
