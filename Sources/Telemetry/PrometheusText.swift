/// Writes the Prometheus text exposition format (version 0.0.4).
public struct PrometheusText {
    public private(set) var text = ""

    public init() {}

    public mutating func family(_ name: String, _ help: String, _ kind: MetricKind) {
        text += "# HELP \(name) \(Self.escapeHelp(help))\n# TYPE \(name) \(kind.rawValue)\n"
    }

    public mutating func sample(_ name: String, _ labels: [(String, String)], _ value: Double) {
        text += name
        writeLabels(labels)
        text += " "
        text += Self.format(value)
        text += "\n"
    }

    public mutating func histogram(_ name: String, _ labels: [(String, String)], _ values: HistogramValues, bounds: [Double]) {
        let cumulative = values.cumulative()
        for (i, bound) in bounds.enumerated() {
            sample(name + "_bucket", labels + [("le", Self.format(bound))], Double(cumulative[i]))
        }
        sample(name + "_bucket", labels + [("le", "+Inf")], Double(values.count))
        sample(name + "_sum", labels, values.sum)
        sample(name + "_count", labels, Double(values.count))
    }

    private mutating func writeLabels(_ labels: [(String, String)]) {
        guard !labels.isEmpty else { return }
        text += "{"
        for (i, (name, value)) in labels.enumerated() {
            if i > 0 { text += "," }
            text += name
            text += "=\""
            text += Self.escapeLabel(value)
            text += "\""
        }
        text += "}"
    }

    static func format(_ v: Double) -> String {
        if v.isNaN { return "NaN" }
        if v.isInfinite { return v > 0 ? "+Inf" : "-Inf" }
        if v == v.rounded(), abs(v) < 1e15 { return String(Int64(v)) }
        return "\(v)"
    }

    /// Label values escape backslash, double quote and newline.
    static func escapeLabel(_ s: String) -> String {
        guard s.utf8.contains(where: { $0 == 92 || $0 == 34 || $0 == 10 }) else { return s }
        var out = ""
        for c in s {
            switch c {
            case "\\": out += "\\\\"
            case "\"": out += "\\\""
            case "\n": out += "\\n"
            default: out.append(c)
            }
        }
        return out
    }

    /// Help text escapes backslash and newline.
    static func escapeHelp(_ s: String) -> String {
        s.replacingOccurrences("\\", "\\\\").replacingOccurrences("\n", "\\n")
    }
}

extension String {
    fileprivate func replacingOccurrences(_ a: String, _ b: String) -> String {
        split(separator: a, omittingEmptySubsequences: false).joined(separator: b)
    }
}

extension MetricSnapshot {
    /// Writes every family these values have, the gateway's first, then scripts' (sorted by
    /// name; families of one name as declared most recently, in `current`).
    public func write(into out: inout PrometheusText, scriptFamilies current: [MetricFamily]) {
        let routes = MetricNames.routes.all()
        let upstreams = MetricNames.upstreams.all()
        func route(_ id: Int) -> String { id >= 0 && id < routes.count ? routes[id] : "_unmatched" }
        func upstream(_ id: Int) -> String { id >= 0 && id < upstreams.count ? upstreams[id] : "_unknown" }

        out.family("moongate_requests_total", "Requests answered, by route, method and status.", .counter)
        for (key, count) in requests.sorted(by: { $0.key < $1.key }) {
            let labels = [
                ("route", route((key >> 20) - 1)), ("method", MethodLabel.names[(key >> 10) & 1023]), ("status", String(key & 1023)),
            ]
            out.sample("moongate_requests_total", labels, Double(count))
        }
        out.family("moongate_request_duration_seconds", "Time from the request's first byte to the end of its response, by route.", .histogram)
        for (id, values) in requestSeconds.sorted(by: { $0.key < $1.key }) {
            out.histogram("moongate_request_duration_seconds", [("route", route(id))], values, bounds: LatencyBuckets.seconds)
        }
        out.family("moongate_upstream_duration_seconds", "Time from sending a try to its response head, by upstream.", .histogram)
        for (id, values) in upstreamSeconds.sorted(by: { $0.key < $1.key }) {
            out.histogram("moongate_upstream_duration_seconds", [("upstream", upstream(id))], values, bounds: LatencyBuckets.seconds)
        }
        let events: [(MetricStore.UpstreamEvent, String, String)] = [
            (.connectError, "moongate_upstream_connect_errors_total", "Connections to upstream targets that failed or timed out."),
            (.retry, "moongate_upstream_retries_total", "Tries after the first, by upstream."),
            (.timeout, "moongate_upstream_timeouts_total", "Tries that timed out waiting for the upstream, by upstream."),
        ]
        for (event, name, help) in events {
            out.family(name, help, .counter)
            for (key, count) in upstreamEvents.sorted(by: { $0.key < $1.key }) where key & 3 == event.rawValue {
                out.sample(name, [("upstream", upstream(key >> 2))], Double(count))
            }
        }
        out.family("moongate_rate_limit_decisions_total", "Rate-limit decisions, by route and result.", .counter)
        for (key, count) in rateLimit.sorted(by: { $0.key < $1.key }) {
            let result = MetricStore.RateLimitResult(rawValue: key & 3)!.label
            out.sample("moongate_rate_limit_decisions_total", [("route", route((key >> 2) - 1)), ("result", result)], Double(count))
        }
        let scripts = current.filter { !$0.name.hasPrefix("moongate_") }.sorted { $0.name < $1.name }
        for family in BuiltinFamilies.all + scripts {
            writeFamily(family, into: &out)
        }
    }

    private func writeFamily(_ family: MetricFamily, into out: inout PrometheusText) {
        out.family(family.name, family.help.isEmpty ? family.name : family.help, family.kind)
        let names = family.labelNames
        if family.kind == .histogram {
            for (key, values) in histograms where key.family === family {
                out.histogram(family.name, Array(zip(names, key.labels)), values, bounds: family.buckets)
            }
        } else {
            for (key, value) in series.sorted(by: { $0.key.labels.lexicographicallyPrecedes($1.key.labels) }) where key.family === family {
                out.sample(family.name, Array(zip(names, key.labels)), value)
            }
        }
    }
}
