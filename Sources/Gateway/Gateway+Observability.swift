#if canImport(Glibc)
import Glibc
#endif
import Config
import FoundationEssentials
import NIOCore
import Proxy
import Telemetry
import Scripting
import Prometheus

/// What the admin endpoints read: metrics summed over the workers, readiness, status.
extension Gateway {
    /// One worker's view at scrape time.
    struct WorkerView: Sendable {
        var metrics: MetricSnapshot
        var pools: [String: PoolCount]
        var health: [String: TargetView]
        var lua: LuaPoolStats
        var accessLogDropped: Int
        var spansExported: Int
        var spansDropped: Int
    }

    struct PoolCount: Sendable {
        var inUse: Int
        var idle: Int
    }

    struct TargetView: Sendable {
        var ejected: Bool
        var breaker: String
        var inFlight: Int
    }

    func workerViews() async -> [WorkerView] {
        var out: [WorkerView] = []
        for worker in workers {
            let view = try? await worker.eventLoop.submit {
                let w = worker.value
                return WorkerView(
                    metrics: w.metrics.snapshot(),
                    pools: w.poolConnections.mapValues { PoolCount(inUse: $0.inUse, idle: $0.idle) },
                    health: w.targetHealth.mapValues { TargetView(ejected: $0.ejected, breaker: $0.breaker, inFlight: $0.inFlight) },
                    lua: w.luaStats, accessLogDropped: w.accessLogDropped,
                    spansExported: w.spansExported, spansDropped: w.spansDropped)
            }.get()
            if let view { out.append(view) }
        }
        return out
    }

    /// The `/metrics` page: the control plane's registry (reloads, swift-metrics), the
    /// workers' summed values, and gauges read at scrape time.
    public func metricsText() async -> String {
        let views = await workerViews()
        var total = MetricSnapshot()
        for view in views { total.merge(view.metrics) }
        var out = PrometheusText()
        total.write(into: &out, scriptFamilies: scriptFamilies.families)

        out.family("moongate_upstream_connections", "Upstream connections, by target and state (in_use or idle), summed over workers.", .gauge)
        var pools: [String: PoolCount] = [:]
        for view in views {
            for (target, count) in view.pools {
                pools[target, default: PoolCount(inUse: 0, idle: 0)].inUse += count.inUse
                pools[target, default: PoolCount(inUse: 0, idle: 0)].idle += count.idle
            }
        }
        for (target, count) in pools.sorted(by: { $0.key < $1.key }) {
            out.sample("moongate_upstream_connections", [("target", target), ("state", "in_use")], Double(count.inUse))
            out.sample("moongate_upstream_connections", [("target", target), ("state", "idle")], Double(count.idle))
        }
        out.family(
            "moongate_upstream_breaker_state",
            "Workers whose circuit breaker for the target is in each state (closed, open, half_open); each worker has its own.", .gauge)
        var breakers: [String: [String: Int]] = [:]
        var ejected: [String: Int] = [:]
        for view in views {
            for (target, t) in view.health {
                breakers[target, default: ["closed": 0, "open": 0, "half_open": 0]][t.breaker, default: 0] += 1
                ejected[target, default: 0] += t.ejected ? 1 : 0
            }
        }
        for (target, states) in breakers.sorted(by: { $0.key < $1.key }) {
            for (state, n) in states.sorted(by: { $0.key < $1.key }) {
                out.sample("moongate_upstream_breaker_state", [("target", target), ("state", state)], Double(n))
            }
        }
        out.family("moongate_upstream_target_ejected", "Workers that have ejected the target after failed tries (passive health).", .gauge)
        for (target, n) in ejected.sorted(by: { $0.key < $1.key }) {
            out.sample("moongate_upstream_target_ejected", [("target", target)], Double(n))
        }
        out.family("moongate_upstream_target_probe_healthy", "Whether the active health check finds the target healthy (1) or not (0).", .gauge)
        for (target, state) in probed.sorted(by: { $0.key < $1.key }) {
            out.sample("moongate_upstream_target_probe_healthy", [("target", target)], state.healthy ? 1 : 0)
        }
        out.family("moongate_access_log_dropped_total", "Access-log lines dropped because the destination could not keep up.", .counter)
        out.sample("moongate_access_log_dropped_total", [], Double(views.reduce(0) { $0 + $1.accessLogDropped }))
        out.family("moongate_trace_spans_exported_total", "Spans the collector accepted.", .counter)
        out.sample("moongate_trace_spans_exported_total", [], Double(views.reduce(0) { $0 + $1.spansExported }))
        out.family("moongate_trace_spans_dropped_total", "Spans dropped: the buffer was full or the export failed.", .counter)
        out.sample("moongate_trace_spans_dropped_total", [], Double(views.reduce(0) { $0 + $1.spansDropped }))
        out.family("moongate_lua_states", "Lua interpreters the workers hold for the current generation (one per worker).", .gauge)
        out.sample("moongate_lua_states", [], Double(views.reduce(0) { $0 + $1.lua.interpreters }))
        out.family("moongate_lua_contexts", "Request contexts (threads of the interpreters) the workers hold, idle or serving a request.", .gauge)
        out.sample("moongate_lua_contexts", [], Double(views.reduce(0) { $0 + $1.lua.contexts }))
        out.family("moongate_lua_heap_bytes", "Heap bytes of the workers' Lua interpreters.", .gauge)
        out.sample("moongate_lua_heap_bytes", [], Double(views.reduce(0) { $0 + $1.lua.heapBytes }))
        out.family("moongate_config_generation", "The config generation serving new requests.", .gauge)
        out.sample("moongate_config_generation", [], Double(generation?.id ?? 0))
        out.family("moongate_build_info", "The gateway's version.", .gauge)
        out.sample("moongate_build_info", [("version", version)], 1)
        out.family("process_start_time_seconds", "Start time of the process since the Unix epoch in seconds.", .gauge)
        out.sample("process_start_time_seconds", [], startedAt.timeIntervalSince1970.rounded())
        if let rss = Self.residentBytes() {
            out.family("process_resident_memory_bytes", "Resident memory size in bytes.", .gauge)
            out.sample("process_resident_memory_bytes", [], Double(rss))
        }
        return prometheus.emitToString() + out.text
    }

    /// Ready when a config is loaded and the gateway is not draining.
    public func readiness() -> (Bool, String) {
        if draining { return (false, "draining") }
        if generation == nil { return (false, "no config loaded") }
        return (true, "")
    }

    /// `/status`: version, uptime, generation, the last reload's result, targets' health.
    public func statusJSON() async -> String {
        let views = await workerViews()
        var targets: [String: [String: JSONValue]] = [:]
        for (index, view) in views.enumerated() {
            for (target, t) in view.health {
                var entry = targets[target] ?? ["workers": .array([])]
                guard case .array(var list)? = entry["workers"] else { continue }
                list.append(["worker": .int(index), "ejected": .bool(t.ejected), "breaker": .string(t.breaker), "in_flight": .int(t.inFlight)])
                entry["workers"] = .array(list)
                if let probe = probed[target] { entry["probe_healthy"] = .bool(probe.healthy) }
                targets[target] = entry
            }
        }
        var reload: [String: JSONValue] = [:]
        if let last = lastReload {
            reload = ["generation": .int(last.generation), "succeeded": .bool(last.succeeded), "errors": .array(last.errors.map(JSONValue.string))]
        }
        let (ready, _) = readiness()
        let status: JSONValue = [
            "version": .string(version),
            "uptime_seconds": .int(Int(Date().timeIntervalSince(startedAt).rounded())),
            "ready": .bool(ready),
            "config": [
                "path": .string(configPath), "generation": .int(generation?.id ?? 0),
                "scripts": .array((generation?.scripts?.policies ?? []).map(JSONValue.string)),
            ],
            "workers": .int(views.count),
            "last_reload": .object(reload),
            "store": await storeHealth(),
            "targets": .object(targets.mapValues(JSONValue.object)),
        ]
        return status.canonicalText
    }

    /// The admin listener's port (0 config ports bind a free one), or nil with no admin.
    public func adminPort() -> Int? { admin?.port }

    static func residentBytes() -> Int? {
        guard let text = try? String(contentsOfFile: "/proc/self/statm", encoding: .utf8) else { return nil }
        let fields = text.split(separator: " ")
        guard fields.count > 1, let pages = Int(fields[1]) else { return nil }
        return pages * Int(sysconf(Int32(_SC_PAGESIZE)))
    }
}
