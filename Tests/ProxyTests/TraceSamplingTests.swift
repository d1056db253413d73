import Config
import Testing

@testable import Proxy

/// The share of new traces kept follows `tracing.sample_ratio`, at its edges too.
@Suite struct TraceSamplingTests {
    func threshold(_ ratio: Double) throws -> UInt64 {
        var config = TracingConfig()
        config.sampleRatio = ratio
        return try TraceExport(config, endpoint: HTTPEndpoint(host: "127.0.0.1", port: 4318, path: "/v1/traces")).sampleBelow
    }

    @Test func ratiosMapOntoTheTraceIDSpace() throws {
        #expect(try threshold(1) == .max)
        #expect(try threshold(0) == 0)
        // The largest ratio under 1: just under the whole space, and a valid UInt64.
        #expect(try threshold(1 - 0x1p-53) > .max - 8192)
        let half = try threshold(0.5)
        #expect(half > (1 << 63) - (1 << 40) && half < (1 << 63) + (1 << 40))
        // Odd trace ids (as the gateway makes them) under a quarter's threshold: about a quarter.
        let quarter = try threshold(0.25)
        var random = RequestIDGenerator()
        let kept = (0..<100_000).filter { _ in random.next64() | 1 <= quarter }.count
        #expect(kept > 24_000 && kept < 26_000)
    }
}
