import CLuaRuntime
import Telemetry
import Logging

/// `metrics`: Prometheus counters, gauges and histograms of a script's own.
///
///     local hits = metrics.counter{name = "shop_hits_total", help = "Hits by plan.", labels = {"plan"}}
///     local seconds = metrics.histogram{name = "shop_lookup_seconds", labels = {}, buckets = {0.01, 0.1, 1}}
///     -- per request:
///     hits:inc(1, "gold")
///     seconds:observe(0.02)
///
/// Declared when the script loads (a declaration while serving a request is an error), with
/// label names; updated per request with the label values, in order. Each metric keeps at
/// most `metrics.max_series` label combinations per worker; the rest go to one series whose
/// labels are all `_overflow`, with a warning, so user ids as labels cannot exhaust memory.
public struct MetricsModule: LuaModule {
    public let name = "metrics"
    let box: FamiliesBox

    public init(families: ScriptMetricFamilies) {
        box = FamiliesBox(families)
    }

    /// The families this module's scripts declare into.
    public var families: ScriptMetricFamilies { box.families }

    static let metatable = "moongate.metric"
    static let familiesKey = "moongate.metrics.families"
    /// Longest label value kept; longer ones are an error (they are almost always ids).
    static let maxLabelBytes = 256

    public func register(_ L: OpaquePointer) {
        // The handles' metatable, made once per state; `__gc` drops the family reference.
        if luaL_newmetatable(L, Self.metatable) != 0 {
            lua_createtable(L, 0, 5)
            Lua.setFunction(L, "inc") { L in MetricsModule.update(L!, .inc) }
            Lua.setFunction(L, "dec") { L in MetricsModule.update(L!, .dec) }
            Lua.setFunction(L, "set") { L in MetricsModule.update(L!, .set) }
            Lua.setFunction(L, "observe") { L in MetricsModule.update(L!, .observe) }
            lua_setfield(L, -2, "__index")
            Lua.setFunction(L, "__gc") { L in
                if let p = luaL_testudata(L!, 1, MetricsModule.metatable) {
                    let raw = p.load(as: UnsafeRawPointer?.self)
                    p.storeBytes(of: nil, as: UnsafeRawPointer?.self)
                    if let raw { Unmanaged<MetricFamily>.fromOpaque(raw).release() }
                }
                return 0
            }
            Lua.push(L, "metric")
            lua_setfield(L, -2, "__metatable")
        }
        mg_pop(L, 1)
        // The module outlives its states (each holds its program, which holds the module).
        lua_pushlightuserdata(L, Unmanaged.passUnretained(self.box).toOpaque())
        lua_setfield(L, mg_registry_index(), Self.familiesKey)
        Lua.setFunction(L, "counter") { L in MetricsModule.declare(L!, .counter) }
        Lua.setFunction(L, "gauge") { L in MetricsModule.declare(L!, .gauge) }
        Lua.setFunction(L, "histogram") { L in MetricsModule.declare(L!, .histogram) }
    }

    /// The gateway's families, as a light userdata for the declaring closures.
    final class FamiliesBox: Sendable {
        let families: ScriptMetricFamilies
        init(_ families: ScriptMetricFamilies) { self.families = families }
    }

    private static func declare(_ L: OpaquePointer, _ kind: MetricKind) -> Int32 {
        lua_getfield(L, mg_registry_index(), familiesKey)
        let raw = lua_touserdata(L, -1)
        mg_pop(L, 1)
        guard let raw else { return Lua.raise(L, "metrics: not available") }
        let box = Unmanaged<FamiliesBox>.fromOpaque(raw).takeUnretainedValue()
        let call = "metrics.\(kind.rawValue)"
        guard Lua.current(L) == nil else {
            return Lua.raise(L, "\(call): declare metrics when the script loads, not while serving a request")
        }
        guard lua_type(L, 1) == LUA_TTABLE else {
            return Lua.raise(L, "\(call){name=, help=, labels={...}\(kind == .histogram ? ", buckets={...}" : "")}")
        }
        Lua.rawField(L, 1, "name")
        guard let name = Lua.string(L, -1) else { return Lua.raise(L, "\(call): name must be a string") }
        Lua.rawField(L, 1, "help")
        let help = Lua.string(L, -1) ?? ""
        mg_pop(L, 2)
        guard let labels = strings(L, "labels") else { return Lua.raise(L, "\(call): labels must be a list of names") }
        var buckets: [Double] = []
        if kind == .histogram {
            guard lua_type(L, 1) == LUA_TTABLE, Lua.rawField(L, 1, "buckets") == LUA_TTABLE else {
                return Lua.raise(L, "\(call): buckets must be a list of ascending numbers")
            }
            let n = lua_rawlen(L, -1)
            guard n <= 50 else { return Lua.raise(L, "\(call): at most 50 buckets") }
            for i in 0..<Int(n) {
                lua_rawgeti(L, -1, lua_Integer(i + 1))
                guard lua_type(L, -1) == LUA_TNUMBER else { return Lua.raise(L, "\(call): buckets must be numbers") }
                buckets.append(lua_tonumberx(L, -1, nil))
                mg_pop(L, 1)
            }
            mg_pop(L, 1)
        }
        let family: MetricFamily
        do {
            family = try box.families.declare(name: name, help: help, kind: kind, labelNames: labels, buckets: buckets)
        } catch {
            return Lua.raise(L, "\(call): \(error.description)")
        }
        let slot = lua_newuserdatauv(L, MemoryLayout<UnsafeRawPointer>.size, 0)!
        slot.storeBytes(of: UnsafeRawPointer(Unmanaged.passRetained(family).toOpaque()), as: UnsafeRawPointer?.self)
        lua_getfield(L, mg_registry_index(), metatable)
        lua_setmetatable(L, -2)
        return 1
    }

    /// The strings of the list `t[field]` of the table at 1 (an absent field is an empty list).
    private static func strings(_ L: OpaquePointer, _ field: String) -> [String]? {
        let type = Lua.rawField(L, 1, field)
        defer { mg_pop(L, 1) }
        if type == LUA_TNIL { return [] }
        guard type == LUA_TTABLE else { return nil }
        let n = lua_rawlen(L, -1)
        guard n <= 10 else { return nil }
        var out: [String] = []
        for i in 0..<Int(n) {
            lua_rawgeti(L, -1, lua_Integer(i + 1))
            defer { mg_pop(L, 1) }
            guard let s = Lua.string(L, -1) else { return nil }
            out.append(s)
        }
        return out
    }

    enum Update { case inc, dec, set, observe }

    private static func update(_ L: OpaquePointer, _ update: Update) -> Int32 {
        guard let slot = luaL_testudata(L, 1, metatable), let raw = slot.load(as: UnsafeRawPointer?.self) else {
            return Lua.raise(L, "metrics: call as metric:\(update)(value, label values...)")
        }
        let family = Unmanaged<MetricFamily>.fromOpaque(raw).takeUnretainedValue()
        let method = "\(family.name):\(update)"
        switch (family.kind, update) {
        case (.counter, .inc), (.gauge, .inc), (.gauge, .dec), (.gauge, .set), (.histogram, .observe): break
        default: return Lua.raise(L, "\(method): a \(family.kind.rawValue) has no \(update)")
        }
        var value = 1.0
        if !Lua.isNoneOrNil(L, 2) {
            guard lua_type(L, 2) == LUA_TNUMBER else { return Lua.raise(L, "\(method): the value must be a number") }
            value = lua_tonumberx(L, 2, nil)
        } else if update == .set || update == .observe {
            return Lua.raise(L, "\(method): needs a value")
        }
        guard value.isFinite else { return Lua.raise(L, "\(method): the value must be finite") }
        if family.kind == .counter, value < 0 { return Lua.raise(L, "\(method): a counter only goes up") }
        // Label values: the arguments after the value, or one list of them (as
        // nginx-lua-prometheus takes them).
        var labels: [String] = []
        labels.reserveCapacity(family.labelNames.count)
        let top = lua_gettop(L)
        if top == 3, lua_type(L, 3) == LUA_TTABLE {
            let n = Int(lua_rawlen(L, 3))
            for i in 0..<n {
                lua_rawgeti(L, 3, lua_Integer(i + 1))
                defer { mg_pop(L, 1) }
                guard let s = label(L, -1) else { return Lua.raise(L, "\(method): label values must be strings or numbers") }
                labels.append(s)
            }
        } else if top >= 3 {
            for i in 3...top {
                guard let s = label(L, i) else { return Lua.raise(L, "\(method): label values must be strings or numbers") }
                labels.append(s)
            }
        }
        guard labels.count == family.labelNames.count else {
            return Lua.raise(
                L, "\(method): \(family.labelNames.count) label value(s) expected (\(family.labelNames.joined(separator: ", "))), got \(labels.count)")
        }
        if let long = labels.first(where: { $0.utf8.count > maxLabelBytes }) {
            return Lua.raise(L, "\(method): label value longer than \(maxLabelBytes) bytes (\(long.utf8.count))")
        }
        guard let host = Lua.host(L), let store = host.scriptMetrics else {
            // Loading, or a host with no metrics (benchmarks): nothing to count into.
            return 0
        }
        let overflowing: Bool
        switch update {
        case .inc: overflowing = store.add(family, labels, value)
        case .dec: overflowing = store.add(family, labels, -value)
        case .set: overflowing = store.add(family, labels, value, set: true)
        case .observe: overflowing = store.observe(family, labels, value)
        }
        if overflowing {
            host.scriptLog(
                .warning, "metric \(family.name) has \(family.maxSeries) label combinations on this worker: new ones go to the _overflow series",
                location: Lua.callerLocation(L))
        }
        return 0
    }

    private static func label(_ L: OpaquePointer, _ index: Int32) -> String? {
        switch lua_type(L, index) {
        case LUA_TSTRING: return Lua.string(L, index)
        case LUA_TNUMBER:
            if let i = Lua.integer(L, index) { return String(i) }
            return String(lua_tonumberx(L, index, nil))
        default: return nil
        }
    }
}
