import NIOConcurrencyHelpers

/// What a metric is: a counter only goes up, a gauge is set, a histogram counts observations
/// into buckets.
public enum MetricKind: String, Sendable {
    case counter, gauge, histogram
}

/// A metric with labels, recorded per event loop (`MetricStore`) and summed at scrape time:
/// the gateway's own labelled families and those scripts declare through `metrics`.
/// Identity matters: two declarations of one shape share the family.
public final class MetricFamily: Sendable, Hashable {
    public let name: String
    public let help: String
    public let kind: MetricKind
    public let labelNames: [String]
    /// Histogram bucket bounds, ascending; empty for counters and gauges.
    public let buckets: [Double]
    /// Label combinations kept per worker; the rest go to one overflow series.
    public let maxSeries: Int

    public init(name: String, help: String, kind: MetricKind, labelNames: [String], buckets: [Double] = [], maxSeries: Int = 1000) {
        self.name = name
        self.help = help
        self.kind = kind
        self.labelNames = labelNames
        self.buckets = buckets
        self.maxSeries = maxSeries
    }

    /// The label values of the series that takes combinations past `maxSeries`.
    public var overflowLabels: [String] { Array(repeating: "_overflow", count: labelNames.count) }

    func sameShape(_ other: MetricFamily) -> Bool {
        kind == other.kind && labelNames == other.labelNames && buckets == other.buckets && help == other.help
            && maxSeries == other.maxSeries
    }

    public static func == (a: MetricFamily, b: MetricFamily) -> Bool { a === b }
    public func hash(into hasher: inout Hasher) { hasher.combine(ObjectIdentifier(self)) }
}

/// Why a declaration was refused; the message is for the script's author.
public struct MetricDeclarationError: Error, CustomStringConvertible {
    public var description: String
}

/// The families scripts declared, by name, for one gateway. Scripts declare when a state
/// loads them (never per request), so the lock here is off the request path.
public final class ScriptMetricFamilies: Sendable {
    /// Families a gateway's scripts may declare, at most.
    public static let maxFamilies = 500
    private let byName = NIOLockedValueBox<[String: MetricFamily]>([:])
    public let maxSeries: Int

    public init(maxSeries: Int = 1000) {
        self.maxSeries = maxSeries
    }

    /// The family for this declaration: the existing one if its shape is the same, else a new
    /// one that replaces it (a reloaded script that changed its labels starts new series).
    public func declare(name: String, help: String, kind: MetricKind, labelNames: [String], buckets: [Double]) throws(MetricDeclarationError) -> MetricFamily {
        try Self.validate(name: name, kind: kind, labelNames: labelNames, buckets: buckets)
        let family = MetricFamily(name: name, help: help, kind: kind, labelNames: labelNames, buckets: buckets, maxSeries: maxSeries)
        let result: Result<MetricFamily, MetricDeclarationError> = byName.withLockedValue { families in
            if let existing = families[name], existing.sameShape(family) { return .success(existing) }
            if families[name] == nil, families.count >= Self.maxFamilies {
                return .failure(MetricDeclarationError(description: "more than \(Self.maxFamilies) metrics declared"))
            }
            families[name] = family
            return .success(family)
        }
        return try result.get()
    }

    /// The families in force, by name.
    public var families: [MetricFamily] { byName.withLockedValue { Array($0.values) } }

    static func validate(name: String, kind: MetricKind, labelNames: [String], buckets: [Double]) throws(MetricDeclarationError) {
        guard isName(name, colons: true) else {
            throw MetricDeclarationError(description: "metric name \"\(name)\" must match [a-zA-Z_:][a-zA-Z0-9_:]*")
        }
        if name.hasPrefix("moongate_") { throw MetricDeclarationError(description: "metric names starting moongate_ are the gateway's") }
        if name.count > 200 { throw MetricDeclarationError(description: "metric name longer than 200 characters") }
        if labelNames.count > 10 { throw MetricDeclarationError(description: "\(name): more than 10 labels") }
        var seen: Set<String> = []
        for label in labelNames {
            guard isName(label, colons: false), !label.hasPrefix("__") else {
                throw MetricDeclarationError(description: "\(name): label name \"\(label)\" must match [a-zA-Z_][a-zA-Z0-9_]* and not start with __")
            }
            if kind == .histogram, label == "le" { throw MetricDeclarationError(description: "\(name): a histogram cannot have a label named le") }
            guard seen.insert(label).inserted else { throw MetricDeclarationError(description: "\(name): label \"\(label)\" twice") }
        }
        if kind == .histogram {
            guard !buckets.isEmpty, buckets.count <= 50 else { throw MetricDeclarationError(description: "\(name): 1 to 50 buckets") }
            for (a, b) in zip(buckets, buckets.dropFirst()) where !(a < b) {
                throw MetricDeclarationError(description: "\(name): buckets must be ascending")
            }
            if buckets.contains(where: { !$0.isFinite }) { throw MetricDeclarationError(description: "\(name): buckets must be finite") }
        }
    }

    static func isName(_ s: String, colons: Bool) -> Bool {
        guard let first = s.utf8.first else { return false }
        func letter(_ c: UInt8) -> Bool { (c >= 97 && c <= 122) || (c >= 65 && c <= 90) || c == 95 || (colons && c == 58) }
        return letter(first) && s.utf8.allSatisfy { letter($0) || ($0 >= 48 && $0 <= 57) }
    }
}
