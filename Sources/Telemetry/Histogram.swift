/// Bucket bounds (upper, inclusive) in seconds for a gateway's latencies: sub-millisecond
/// proxying up to slow upstreams, as Prometheus advises (`_seconds`, a handful of buckets).
public enum LatencyBuckets {
    public static let seconds: [Double] = [0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10]
}

/// A histogram's counts: one per bucket (not cumulative) and one past the last bound.
public struct HistogramValues: Sendable, Equatable {
    public var counts: [UInt64]
    public var sum: Double = 0
    public var count: UInt64 = 0

    public init(buckets: Int) {
        counts = Array(repeating: 0, count: buckets + 1)
    }

    @inline(__always)
    public mutating func observe(_ value: Double, bounds: [Double]) {
        var i = 0
        while i < bounds.count, value > bounds[i] { i += 1 }
        counts[i] &+= 1
        sum += value
        count &+= 1
    }

    mutating func merge(_ other: HistogramValues) {
        guard other.counts.count == counts.count else { return }
        for i in counts.indices { counts[i] &+= other.counts[i] }
        sum += other.sum
        count &+= other.count
    }

    /// Count of observations at or below each bound, as the exposition wants them.
    public func cumulative() -> [UInt64] {
        var total: UInt64 = 0
        return counts.map {
            total &+= $0
            return total
        }
    }
}
