import CLuaRuntime
import Config
import NIOCore
import Proxy
import Scripting
import Telemetry

/// What a test file's functions reach through `Lua.current`: the simulated gateway, the
/// stubs the running test set, the fake clock and the captured logs.
final class TestContext {
    let simulation: SimulatedGateway
    let clock: FakeClock
    let logs: LogStore
    /// Upstream name → registry ref of its stub function in the test state.
    var stubs: [String: Int32] = [:]
    /// The metrics the policies declared.
    var scriptFamilies: ScriptMetricFamilies?
    /// This test's access-log lines so far (JSON text), oldest first; bounded.
    var accessLog: [String] = []
    static let maxAccessLogLines = 10_000

    init(simulation: SimulatedGateway, clock: FakeClock, logs: LogStore) {
        self.simulation = simulation
        self.clock = clock
        self.logs = logs
    }

    /// Moves the access-log lines the simulated worker wrote into this test's list.
    func collectAccessLog() {
        accessLog.append(contentsOf: simulation.takeAccessLog())
        if accessLog.count > Self.maxAccessLogLines { accessLog.removeFirst(accessLog.count - Self.maxAccessLogLines) }
    }

    /// Each test starts with no stubs, no logs and the clock at its start.
    func reset(_ L: OpaquePointer) {
        for ref in stubs.values { luaL_unref(L, mg_registry_index(), ref) }
        stubs = [:]
        logs.clear()
        _ = simulation.takeAccessLog()
        accessLog = []
        clock.reset()
        simulation.metrics.reset()
        simulation.resetTargetHealth()
    }
}

/// `harness`: what tests use to drive policies as the gateway runs them. Later modules add
/// their own helpers under it (`harness.jwt`, ...) by passing them as `helpers`: each
/// `LuaModule` becomes `harness.<name>`.
public struct HarnessModule: LuaModule {
    public let name = "harness"
    let helpers: [any LuaModule]

    public init(helpers: [any LuaModule] = []) {
        self.helpers = helpers
    }

    public func register(_ L: OpaquePointer) {
        Lua.setFunction(L, "request") { L in harnessRequest(L!) }
        Lua.setFunction(L, "upstream") { L in
            let L = L!
            guard let context = testContext(L) else { return notInTest(L, "harness.upstream") }
            guard let name = Lua.string(L, 1), lua_type(L, 2) == LUA_TFUNCTION else {
                return Lua.raise(L, "harness.upstream(name, function(request) return {status=, headers=, body=} end)")
            }
            guard context.simulation.generation.config.upstreamIndex(named: name) != nil else {
                return Lua.raise(L, "harness.upstream: no upstream \"\(name)\" in the config")
            }
            lua_settop(L, 2)
            if let old = context.stubs[name] { luaL_unref(L, mg_registry_index(), old) }
            context.stubs[name] = luaL_ref(L, mg_registry_index())
            return 0
        }
        Lua.setFunction(L, "logs") { L in
            let L = L!
            guard let context = testContext(L) else { return notInTest(L, "harness.logs") }
            let lines = context.logs.all
            lua_createtable(L, Int32(lines.count), 0)
            for (i, line) in lines.enumerated() {
                lua_createtable(L, 0, 4)
                Lua.push(L, "\(line.level)")
                lua_setfield(L, -2, "level")
                Lua.push(L, line.message)
                lua_setfield(L, -2, "message")
                for (key, value) in line.metadata where ["script", "plugin", "error", "budget", "route", "phase"].contains(key) {
                    Lua.push(L, value)
                    lua_setfield(L, -2, key)
                }
                lua_rawseti(L, -2, lua_Integer(i + 1))
            }
            return 1
        }
        Lua.setFunction(L, "access_log") { L in
            let L = L!
            guard let context = testContext(L) else { return notInTest(L, "harness.access_log") }
            context.collectAccessLog()
            lua_createtable(L, Int32(context.accessLog.count), 0)
            for (i, line) in context.accessLog.enumerated() {
                let pushed = line.utf8CString.withUnsafeBufferPointer { mg_json_push(L, $0.baseAddress, $0.count - 1) }
                if pushed != 1 { Lua.push(L, line) }
                lua_rawseti(L, -2, lua_Integer(i + 1))
            }
            return 1
        }
        Lua.setFunction(L, "metric") { L in harnessMetric(L!) }
        lua_createtable(L, 0, 3)
        Lua.setFunction(L, "now") { L in
            let L = L!
            guard let context = testContext(L) else { return notInTest(L, "harness.clock.now") }
            lua_pushnumber(L, context.clock.now())
            return 1
        }
        Lua.setFunction(L, "set") { L in
            let L = L!
            guard let context = testContext(L) else { return notInTest(L, "harness.clock.set") }
            guard lua_type(L, 1) == LUA_TNUMBER else { return Lua.raise(L, "harness.clock.set(seconds since the epoch)") }
            context.clock.set(lua_tonumberx(L, 1, nil))
            return 0
        }
        Lua.setFunction(L, "advance") { L in
            let L = L!
            guard let context = testContext(L) else { return notInTest(L, "harness.clock.advance") }
            guard lua_type(L, 1) == LUA_TNUMBER else { return Lua.raise(L, "harness.clock.advance(seconds)") }
            let seconds = lua_tonumberx(L, 1, nil)
            guard seconds >= 0, seconds <= 1e9 else { return Lua.raise(L, "harness.clock.advance: seconds from 0 to 1e9") }
            context.clock.advance(seconds)
            // The data plane's clock too: its timeouts, breakers and ejections come due.
            context.simulation.advance(by: .nanoseconds(Int64((seconds * 1e9).rounded())))
            return 0
        }
        lua_setfield(L, -2, "clock")
        for helper in helpers {
            lua_createtable(L, 0, 4)
            helper.register(L)
            lua_setfield(L, -2, helper.name)
        }
    }
}

/// `harness.metric(name [, {label = value, ...}])`: the value of a series as `/metrics`
/// would show it (a histogram's count, then its sum), or nil if the test made none.
private func harnessMetric(_ L: OpaquePointer) -> Int32 {
    guard let context = testContext(L) else { return notInTest(L, "harness.metric") }
    guard let name = Lua.string(L, 1) else { return Lua.raise(L, "harness.metric(name [, {label = value}])") }
    var labels: [String: String] = [:]
    if lua_type(L, 2) == LUA_TTABLE {
        lua_pushnil(L)
        while lua_next(L, 2) != 0 {
            guard let key = Lua.string(L, -2) else { return Lua.raise(L, "harness.metric: label names must be strings") }
            let value: String
            if let s = Lua.string(L, -1) { value = s } else if let i = Lua.integer(L, -1) { value = String(i) } else {
                return Lua.raise(L, "harness.metric: label values must be strings or integers")
            }
            labels[key] = value
            mg_pop(L, 1)
        }
    } else if !Lua.isNoneOrNil(L, 2) {
        return Lua.raise(L, "harness.metric: labels must be a table")
    }
    let families = context.scriptFamilies?.families ?? []
    guard let found = context.simulation.metrics.snapshot().lookup(name, labels, scriptFamilies: families) else {
        lua_pushnil(L)
        return 1
    }
    lua_pushnumber(L, found.value)
    if let sum = found.sum {
        lua_pushnumber(L, sum)
        return 2
    }
    return 1
}

private func testContext(_ L: OpaquePointer) -> TestContext? {
    guard let p = Lua.current(L) else { return nil }
    return Unmanaged<TestContext>.fromOpaque(p).takeUnretainedValue()
}

private func notInTest(_ L: OpaquePointer, _ function: String) -> Int32 {
    Lua.raise(L, "\(function): only inside a test (it, before_each, after_each)")
}

/// `harness.request{method=, path=, headers=, body=, client=, listener=}`: the request goes
/// through the gateway's route matching, policies and upstream stubs; returns
/// `{status=, headers=, body=, upstream=, upstreams=}`.
private func harnessRequest(_ L: OpaquePointer) -> Int32 {
    guard let context = testContext(L) else { return notInTest(L, "harness.request") }
    guard lua_type(L, 1) == LUA_TTABLE else {
        return Lua.raise(L, "harness.request{method=, path=, headers=, body=, client=}: expected a table")
    }
    lua_settop(L, 1)
    var request = SimulatedMessage(method: field(L, "method") ?? "GET", target: field(L, "path") ?? "/")
    request.body = Array((field(L, "body") ?? "").utf8)
    let client = field(L, "client") ?? "127.0.0.1"
    let listener = field(L, "listener")
    Lua.rawField(L, 1, "headers")
    if lua_type(L, -1) == LUA_TTABLE {
        guard let headers = readHeaders(L, lua_gettop(L)) else { return Lua.raise(L, "harness.request: headers must map names to strings or lists of strings") }
        request.headers = headers
    }
    lua_settop(L, 1)

    var stubFailure: String?
    let exchange: (response: SimulatedMessage, upstream: [UpstreamCall])
    do {
        exchange = try context.simulation.send(request, client: client, listener: listener) { call in
            guard let ref = context.stubs[call.upstream] else { return SimulatedMessage(status: 200) }
            let top = lua_gettop(L)
            defer { lua_settop(L, top) }
            lua_rawgeti(L, mg_registry_index(), lua_Integer(ref))
            pushMessage(L, call.request, upstream: call.upstream)
            guard mg_pcall(L, 1, 2, 0) == LUA_OK else {
                stubFailure = "the stub for upstream \"\(call.upstream)\" failed: \(Lua.string(L, -1) ?? "an error")"
                return SimulatedMessage(status: 502)
            }
            // `return nil, "timeout"`: the upstream did not answer.
            if lua_type(L, -2) == LUA_TNIL, let reason = Lua.string(L, -1) {
                guard ["timeout", "unavailable", "too_large"].contains(reason) else {
                    stubFailure = "the stub for upstream \"\(call.upstream)\" failed with \"\(reason.prefix(64))\" (use timeout, unavailable or too_large)"
                    return SimulatedMessage(status: 502)
                }
                return .failed(reason)
            }
            mg_pop(L, 1)
            guard lua_type(L, -1) == LUA_TTABLE else {
                stubFailure = "the stub for upstream \"\(call.upstream)\" must return {status=, headers=, body=} or nil and a reason"
                return SimulatedMessage(status: 502)
            }
            let answer = lua_gettop(L)
            var response = SimulatedMessage(status: 200)
            Lua.rawField(L, answer, "status")
            if let status = Lua.integer(L, -1) { response.status = status }
            Lua.rawField(L, answer, "body")
            response.body = Array((Lua.string(L, -1) ?? "").utf8)
            Lua.rawField(L, answer, "headers")
            if lua_type(L, -1) == LUA_TTABLE { response.headers = readHeaders(L, lua_gettop(L)) ?? [] }
            if !(100...599).contains(response.status) {
                stubFailure = "the stub for upstream \"\(call.upstream)\" returned status \(response.status)"
                response.status = 502
            }
            return response
        }
    } catch {
        return Lua.raise(L, "harness.request: \(error)")
    }
    context.collectAccessLog()
    if let stubFailure { return Lua.raise(L, "harness.request: \(stubFailure)") }
    pushMessage(L, exchange.response, upstream: nil)
    if let last = exchange.upstream.last {
        pushMessage(L, last.request, upstream: last.upstream)
        lua_setfield(L, -2, "upstream")
    }
    lua_createtable(L, Int32(exchange.upstream.count), 0)
    for (i, call) in exchange.upstream.enumerated() {
        pushMessage(L, call.request, upstream: call.upstream)
        lua_rawseti(L, -2, lua_Integer(i + 1))
    }
    lua_setfield(L, -2, "upstreams")
    return 1
}

private func field(_ L: OpaquePointer, _ name: String) -> String? {
    Lua.rawField(L, 1, name)
    defer { mg_pop(L, 1) }
    return Lua.string(L, -1)
}

/// `{name = "v" | {"v1", "v2"}}` at `index`, in the table's order (names sorted for stability).
private func readHeaders(_ L: OpaquePointer, _ index: Int32) -> [(String, String)]? {
    var out: [(String, String)] = []
    lua_pushnil(L)
    while lua_next(L, index) != 0 {
        guard let name = Lua.string(L, -2) else {
            lua_settop(L, index)
            return nil
        }
        if lua_type(L, -1) == LUA_TTABLE {
            for i in 0..<Int(lua_rawlen(L, -1)) {
                lua_rawgeti(L, -1, lua_Integer(i + 1))
                if let v = Lua.string(L, -1) { out.append((name, v)) }
                mg_pop(L, 1)
            }
        } else if let v = Lua.string(L, -1) ?? Lua.integer(L, -1).map(String.init) {
            out.append((name, v))
        } else {
            lua_settop(L, index)
            return nil
        }
        mg_pop(L, 1)
    }
    return out.sorted { $0.0 < $1.0 }
}

/// A message as a Lua table: `status` or `method` and `path`, `headers` (lower-case names;
/// a list when a name repeats), `body`, and `upstream` (the upstream's name) for requests.
private func pushMessage(_ L: OpaquePointer, _ m: SimulatedMessage, upstream: String?) {
    lua_createtable(L, 0, 6)
    if m.status > 0 {
        lua_pushinteger(L, lua_Integer(m.status))
        lua_setfield(L, -2, "status")
    } else {
        Lua.push(L, m.method)
        lua_setfield(L, -2, "method")
        Lua.push(L, m.target)
        lua_setfield(L, -2, "path")
    }
    if let upstream {
        Lua.push(L, upstream)
        lua_setfield(L, -2, "upstream")
    }
    var grouped: [(String, [String])] = []
    for (name, value) in m.headers {
        let lower = name.lowercased()
        if let i = grouped.firstIndex(where: { $0.0 == lower }) { grouped[i].1.append(value) } else { grouped.append((lower, [value])) }
    }
    lua_createtable(L, 0, Int32(grouped.count))
    for (name, values) in grouped {
        if values.count == 1 {
            Lua.push(L, values[0])
        } else {
            lua_createtable(L, Int32(values.count), 0)
            for (i, v) in values.enumerated() {
                Lua.push(L, v)
                lua_rawseti(L, -2, lua_Integer(i + 1))
            }
        }
        lua_setfield(L, -2, name)
    }
    lua_setfield(L, -2, "headers")
    m.body.withUnsafeBytes { Lua.push(L, bytes: $0) }
    lua_setfield(L, -2, "body")
}
