/// One event loop's metrics. Only its loop touches it, so recording is a dictionary update
/// with no lock or atomic; the admin endpoint asks each loop for a `snapshot()` and sums.
/// Hand-written rather than swift-prometheus's shared objects (a lock per histogram record,
/// atomics shared between cores) because this runs for every request.
public final class MetricStore {
    /// Results of a rate-limit decision, as `moongate_rate_limit_decisions_total` labels.
    public enum RateLimitResult: Int, CaseIterable, Sendable {
        case allowed, limited, failOpen, failClosed
        public var label: String {
            switch self {
            case .allowed: "allowed"
            case .limited: "limited"
            case .failOpen: "fail_open"
            case .failClosed: "fail_closed"
            }
        }
    }

    public enum UpstreamEvent: Int, CaseIterable, Sendable {
        case connectError, retry, timeout
    }

    var values = MetricSnapshot()
    private var warned: Set<MetricFamily> = []
    /// Per-request histograms in arrays indexed by the interned id (route + 1, upstream): ids
    /// are small and dense, so a request's observation is an index, not two dictionary lookups.
    /// `snapshot()` folds them into `values`.
    private var requestSeconds: [HistogramValues] = []
    private var upstreamSeconds: [HistogramValues] = []

    public init() {}

    /// A request the gateway answered: `route` from `MetricNames.routes` (-1: none matched).
    @inline(__always)
    public func request(route: Int, method: Int, status: Int, seconds: Double) {
        values.requests[(route &+ 1) << 20 | method << 10 | (status & 1023), default: 0] &+= 1
        Self.observe(&requestSeconds, route &+ 1, seconds)
    }

    /// One try's time to the upstream's response head.
    @inline(__always)
    public func upstreamTry(upstream: Int, seconds: Double) {
        Self.observe(&upstreamSeconds, upstream, seconds)
    }

    @inline(__always)
    private static func observe(_ list: inout [HistogramValues], _ index: Int, _ seconds: Double) {
        if index >= list.count {
            list.append(contentsOf: repeatElement(HistogramValues(buckets: LatencyBuckets.seconds.count), count: index + 1 - list.count))
        }
        list[index].observe(seconds, bounds: LatencyBuckets.seconds)
    }

    public func upstream(_ event: UpstreamEvent, upstream: Int) {
        values.upstreamEvents[upstream << 2 | event.rawValue, default: 0] &+= 1
    }

    @inline(__always)
    public func rateLimit(route: Int, _ result: RateLimitResult) {
        values.rateLimit[(route &+ 1) << 2 | result.rawValue, default: 0] &+= 1
    }

    /// Adds `delta` to a counter or gauge series, or sets a gauge (`set`). Returns true when
    /// this update is the first on this loop to go to the family's overflow series (the family
    /// is at its cap of label combinations): the caller warns once.
    @discardableResult
    public func add(_ family: MetricFamily, _ labels: [String], _ delta: Double, set: Bool = false) -> Bool {
        let key = SeriesKey(family: family, labels: labels)
        if values.series[key] == nil, let overflow = overflowKey(family, key) {
            values.series[overflow, default: 0] = set ? delta : values.series[overflow, default: 0] + delta
            return overflowed(family)
        }
        if set { values.series[key] = delta } else { values.series[key, default: 0] += delta }
        return false
    }

    /// Observes `value` in a histogram series; the return value as for `add`.
    @discardableResult
    public func observe(_ family: MetricFamily, _ labels: [String], _ value: Double) -> Bool {
        var key = SeriesKey(family: family, labels: labels)
        var first = false
        if values.histograms[key] == nil, let overflow = overflowKey(family, key) {
            key = overflow
            first = overflowed(family)
        }
        values.histograms[key, default: HistogramValues(buckets: family.buckets.count)].observe(value, bounds: family.buckets)
        return first
    }

    /// A copy of everything, for the scrape.
    public func snapshot() -> MetricSnapshot {
        var out = values
        for (i, h) in requestSeconds.enumerated() where h.count > 0 { out.requestSeconds[i - 1] = h }
        for (i, h) in upstreamSeconds.enumerated() where h.count > 0 { out.upstreamSeconds[i] = h }
        return out
    }

    /// Forgets everything (the harness, between tests).
    public func reset() {
        values = MetricSnapshot()
        requestSeconds = []
        upstreamSeconds = []
        warned = []
    }

    /// Nil while `key` may have a series of its own (and counts it); else the overflow key.
    private func overflowKey(_ family: MetricFamily, _ key: SeriesKey) -> SeriesKey? {
        let count = values.seriesCount[family] ?? 0
        if count < family.maxSeries {
            values.seriesCount[family] = count + 1
            return nil
        }
        let overflow = SeriesKey(family: family, labels: family.overflowLabels)
        return overflow == key ? nil : overflow
    }

    /// Counts an update that went to `family`'s overflow series; true the first time.
    private func overflowed(_ family: MetricFamily) -> Bool {
        values.series[SeriesKey(family: BuiltinFamilies.metricOverflows, labels: [family.name]), default: 0] += 1
        return warned.insert(family).inserted
    }
}

/// A series of a labelled family.
public struct SeriesKey: Hashable, Sendable {
    public let family: MetricFamily
    public let labels: [String]
}

/// Metric values: one loop's, or the sum of all loops'.
public struct MetricSnapshot: Sendable {
    /// (route id + 1) << 20 | method << 10 | status → count.
    var requests: [Int: UInt64] = [:]
    /// Route id (-1: none) → durations.
    var requestSeconds: [Int: HistogramValues] = [:]
    var upstreamSeconds: [Int: HistogramValues] = [:]
    /// upstream id << 2 | event → count.
    var upstreamEvents: [Int: UInt64] = [:]
    /// (route id + 1) << 2 | result → count.
    var rateLimit: [Int: UInt64] = [:]
    var series: [SeriesKey: Double] = [:]
    var histograms: [SeriesKey: HistogramValues] = [:]
    var seriesCount: [MetricFamily: Int] = [:]

    public init() {}

    /// Adds `other`'s values (another loop's) to these. Gauges add up too: a script's gauge
    /// is per worker, and the sum is the gateway's.
    public mutating func merge(_ other: MetricSnapshot) {
        requests.merge(other.requests, uniquingKeysWith: &+)
        upstreamEvents.merge(other.upstreamEvents, uniquingKeysWith: &+)
        rateLimit.merge(other.rateLimit, uniquingKeysWith: &+)
        series.merge(other.series, uniquingKeysWith: +)
        for (k, v) in other.requestSeconds { requestSeconds[k, default: HistogramValues(buckets: v.counts.count - 1)].merge(v) }
        for (k, v) in other.upstreamSeconds { upstreamSeconds[k, default: HistogramValues(buckets: v.counts.count - 1)].merge(v) }
        for (k, v) in other.histograms { histograms[k, default: HistogramValues(buckets: v.counts.count - 1)].merge(v) }
    }
}
