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

/// `tracing:`: spans exported by OTLP/HTTP when an endpoint is set.
public struct TracingConfig: Sendable, Equatable {
    /// OTLP/HTTP's two encodings (`OTEL_EXPORTER_OTLP_PROTOCOL`'s values).
    public enum Encoding: String, Sendable, Equatable {
        case protobuf = "http/protobuf"
        case json = "http/json"
    }

    /// Default `http/protobuf`, what collectors and SDKs default to.
    public var encoding = Encoding.protobuf
    /// gzip the export bodies (`compression: gzip`, the default; `none` to turn it off).
    public var gzip = true
    /// The collector's traces URL; a URL without a path gets the standard `/v1/traces`. nil: no export.
    public var endpoint: HTTPEndpoint?
    /// The `service.name` resource attribute. Default `moongate`.
    public var serviceName = "moongate"
    /// Share of new traces recorded, from 0 to 1. A request that arrives with a `traceparent`
    /// follows its caller's sampled flag instead. Default 1.
    public var sampleRatio = 1.0
    /// How long one export may take. Default 10 s.
    public var timeout: Duration = .seconds(10)

    public init() {}
}
