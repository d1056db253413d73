/// The gateway's labelled families that are not on the per-request fast path (recorded
/// through `MetricStore.add`, like scripts' own metrics).
public enum BuiltinFamilies {
    /// `module`: jwt, apikey, oauth2; `reason`: the code the script got back.
    public static let authFailures = MetricFamily(
        name: "moongate_auth_failures_total", help: "Credentials refused, by authenticator and reason.",
        kind: .counter, labelNames: ["module", "reason"], maxSeries: 200)
    /// `kind`: error, or the budget that stopped the script (instructions, memory, time, ...).
    public static let luaErrors = MetricFamily(
        name: "moongate_lua_errors_total", help: "Script errors and budget kills, by script and kind.",
        kind: .counter, labelNames: ["script", "kind"], maxSeries: 500)
    public static let metricOverflows = MetricFamily(
        name: "moongate_metric_series_overflow_total",
        help: "Updates that went to a metric's overflow series because it reached its label combinations cap.",
        kind: .counter, labelNames: ["metric"], maxSeries: 500)

    /// WebSocket (and other upgraded) connections passing through, by route.
    public static let tunnelsOpen = MetricFamily(
        name: "moongate_tunnels_open", help: "Tunnels open (upgraded connections such as WebSocket), by route.",
        kind: .gauge, labelNames: ["route"], maxSeries: 500)
    /// `direction`: upstream (from the client) or downstream (to it).
    public static let tunnelBytes = MetricFamily(
        name: "moongate_tunnel_bytes_total", help: "Bytes through tunnels, by route and direction (upstream: from the client).",
        kind: .counter, labelNames: ["route", "direction"], maxSeries: 1000)

    static let all = [authFailures, luaErrors, metricOverflows, tunnelsOpen, tunnelBytes]
}
