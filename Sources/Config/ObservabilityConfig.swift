/// `metrics:`: what the data plane counts and what scripts may declare.
public struct MetricsConfig: Sendable, Equatable {
    /// Off: no per-request counting at all (the admin `/metrics` still answers, empty of
    /// request series). Default on.
    public var enabled = true
    /// Label combinations a script's metric keeps per worker; the rest go to its `_overflow`
    /// series. Default 1000.
    public var maxSeries = 1000

    public init() {}
}

/// `access_log:`: one JSON line per request.
public struct AccessLogConfig: Sendable, Equatable {
    public enum Destination: Sendable, Equatable {
        case stdout, stderr, off
        case file(String)
    }

    /// Default stdout.
    public var destination = Destination.stdout

    public init() {}
}
