import CLuaRuntime
import Config
import HTTPClient
import NIOCore
import NIOHTTP1
import Scripting

/// The `upstream` module: where this request goes and how it is tried, and sub-requests a
/// policy awaits. See docs/lua-api.md.
///
///     upstream.use("billing")                    -- this request's upstream
///     upstream.target("10.0.0.7", 8080)          -- a target of the script's choosing (one try)
///     upstream.options{retries = 0, try_timeout = 0.5, hash_key = user}
///     local res, err = upstream.call("users", {path = "/users/" .. id, timeout = 0.2})
struct UpstreamModule: LuaModule {
    let name = "upstream"

    /// Sub-request answers larger than this are refused (`too_large`).
    static let maxCallBytes = 1024 * 1024

    func register(_ L: OpaquePointer) {
        Lua.setFunction(L, "use") { L in
            let L = L!
            guard let h = changing(L) else { return notChanging(L, "upstream.use") }
            guard let name = Lua.string(L, 1) else { return Lua.raise(L, "upstream.use(name): the name must be a string") }
            guard let index = h.exchange.generation?.shared.config.upstreamIndex(named: name) else {
                return Lua.raise(L, "upstream.use: unknown upstream \"\(name)\"")
            }
            h.edits.upstream = index
            return 0
        }
        Lua.setFunction(L, "target") { L in
            let L = L!
            guard let h = changing(L) else { return notChanging(L, "upstream.target") }
            guard let host = Lua.string(L, 1), let port = Lua.integer(L, 2), (1...65535).contains(port) else {
                return Lua.raise(L, "upstream.target(host, port): an IP address and a port from 1 to 65535")
            }
            // No name lookups on the event loop: an address literal only.
            guard let address = try? SocketAddress(ipAddress: host, port: port) else {
                return Lua.raise(L, "upstream.target: \"\(host.prefix(64))\" is not an IP address (names are resolved in the config only)")
            }
            h.edits.target = (TargetKey(host: host, port: port), address)
            return 0
        }
        Lua.setFunction(L, "options") { L in UpstreamModule.options(L!) }
        Lua.setFunction(L, "call") { L in UpstreamModule.call(L!) }
    }

    static func options(_ L: OpaquePointer) -> Int32 {
        guard let h = changing(L) else { return notChanging(L, "upstream.options") }
        guard lua_type(L, 1) == LUA_TTABLE else { return Lua.raise(L, "upstream.options{retries=, try_timeout=, hash_key=}") }
        switch Lua.rawField(L, 1, "retries") {
        case LUA_TNIL: break
        case LUA_TNUMBER where (Lua.integer(L, -1) ?? -1) >= 0 && (Lua.integer(L, -1) ?? 99) <= 10:
            h.edits.retries = Lua.integer(L, -1)
        default: return Lua.raise(L, "upstream.options: retries must be an integer from 0 to 10")
        }
        switch Lua.rawField(L, 1, "try_timeout") {
        case LUA_TNIL: break
        case LUA_TNUMBER where lua_tonumberx(L, -1, nil) > 0 && lua_tonumberx(L, -1, nil) <= 300:
            h.edits.tryTimeout = .nanoseconds(Int64(lua_tonumberx(L, -1, nil) * 1e9))
        default: return Lua.raise(L, "upstream.options: try_timeout must be seconds, above 0 and at most 300")
        }
        switch Lua.rawField(L, 1, "hash_key") {
        case LUA_TNIL: break
        case LUA_TSTRING: h.edits.hashKey = HashRing.hash(Lua.bytes(L, -1)!)
        default: return Lua.raise(L, "upstream.options: hash_key must be a string")
        }
        lua_settop(L, 1)
        return 0
    }

    static func fail(_ L: OpaquePointer, _ reason: String) -> Int32 {
        lua_pushnil(L)
        Lua.push(L, reason)
        return 2
    }

    /// `upstream.call(name, {method=, path=, headers=, body=, timeout=})`: a request to one
    /// of the upstream's targets (its balancer picks), awaited without blocking the loop.
    /// Returns `{status=, headers=, body=}`, or `nil, reason` (`timeout`, `unavailable`,
    /// `too_large`, `no_target`).
    static func call(_ L: OpaquePointer) -> Int32 {
        guard let h = serving(L) else { return notServing(L, "upstream.call") }
        guard h.scriptCanWait else { return Lua.raise(L, "upstream.call: only in the access phase (it waits for the answer)") }
        guard let name = Lua.string(L, 1), let index = h.exchange.generation?.shared.config.upstreamIndex(named: name),
            let balancer = h.exchange.generation?.balancer(index, on: h.worker)
        else { return Lua.raise(L, "upstream.call(name, request): unknown upstream \"\(Lua.string(L, 1)?.prefix(64) ?? "?")\"") }
        guard lua_type(L, 2) == LUA_TTABLE else { return Lua.raise(L, "upstream.call(name, request): request must be a table with a path") }
        var method = HTTPMethod.GET
        if Lua.rawField(L, 2, "method") == LUA_TSTRING {
            let m = Lua.string(L, -1)!
            guard !m.isEmpty, m.allSatisfy({ $0.isUppercase && $0.isASCII }) else { return Lua.raise(L, "upstream.call: invalid method") }
            method = HTTPMethod(rawValue: m)
        }
        guard Lua.rawField(L, 2, "path") == LUA_TSTRING, let path = Lua.string(L, -1), path.hasPrefix("/"),
            !path.utf8.contains(where: { $0 <= 32 || $0 == 127 }), path.utf8.count <= 8192
        else { return Lua.raise(L, "upstream.call: request.path must start with / (no spaces or control characters)") }
        var timeout = TimeAmount.seconds(5)
        if Lua.rawField(L, 2, "timeout") == LUA_TNUMBER {
            let t = lua_tonumberx(L, -1, nil)
            guard t > 0, t <= 60 else { return Lua.raise(L, "upstream.call: timeout must be seconds, above 0 and at most 60") }
            timeout = .nanoseconds(Int64(t * 1e9))
        }
        var body: [UInt8]?
        switch Lua.rawField(L, 2, "body") {
        case LUA_TNIL: break
        case LUA_TSTRING: body = Array(Lua.bytes(L, -1)!)
        default: return Lua.raise(L, "upstream.call: request.body must be a string")
        }
        var headers: [(String, String)] = [("X-Request-Id", String(buffer: h.exchange.requestID))]
        if Lua.rawField(L, 2, "headers") == LUA_TTABLE {
            var edits = HeaderEdits()
            if let problem = readHeaderTable(L, lua_gettop(L), into: &edits) { return Lua.raise(L, "upstream.call: \(problem)") }
            edits.forEach { name, value in
                guard let value, !HTTPBytes.equalsLower(name, 0, name.count, "host"), !HTTPBytes.equalsLower(name, 0, name.count, "x-request-id") else { return }
                headers.append((String(decoding: name, as: UTF8.self), String(decoding: value, as: UTF8.self)))
            }
        }
        lua_settop(L, 2)
        if let connector = h.worker.connector {
            // `moongate test`: the test's stub for the upstream answers, through the same
            // suspension and result handling as a real call.
            let call = UpstreamCall(
                upstream: name,
                request: SimulatedMessage(method: method.rawValue, target: path, headers: headers, body: body ?? []))
            let resumer = h.scriptSuspend()
            connector.subrequest(call).assumeIsolatedUnsafeUnchecked().whenComplete { result in resumer.resume { L in push(L, result) } }
            return Lua.yield(L)
        }
        let resumer = h.scriptSuspend()
        let request = Subrequest.Request(
            method: method.rawValue, path: path, headers: headers, body: body, timeout: timeout,
            maxBytes: min(maxCallBytes, max(0, Lua.memoryLeft(L) / 2)))
        Subrequest.send(request, through: balancer, on: h.worker) { result in resumer.resume { L in push(L, result) } }
        return Lua.yield(L)
    }

    private static func push(_ L: OpaquePointer, _ result: Result<Subrequest.Response, Subrequest.Failure>) -> Int32 {
        switch result {
        case .success(let response):
            return response.body.withUnsafeReadableBytes { pushResponse(L, status: response.status, headers: response.headers, body: $0) }
        case .failure(.timeout): return fail(L, "timeout")
        case .failure(.tooLarge): return fail(L, "too_large")
        case .failure(.unavailable): return fail(L, "unavailable")
        case .failure(.noTarget): return fail(L, "no_target")
        }
    }

    /// The harness's stubs answer with an `HTTPFetch.Response`, or fail as a fetch would.
    private static func push(_ L: OpaquePointer, _ result: Result<HTTPFetch.Response, Error>) -> Int32 {
        switch result {
        case .success(let response):
            return response.body.withUnsafeBytes { pushResponse(L, status: response.status, headers: response.headers, body: $0) }
        case .failure(let error as HTTPFetch.Failure):
            switch error.kind {
            case .timeout: return fail(L, "timeout")
            case .tooLarge: return fail(L, "too_large")
            case .connection, .status: return fail(L, "unavailable")
            }
        case .failure: return fail(L, "unavailable")
        }
    }

    /// `{status=, headers=, body=}`, unless the body does not fit the script's memory.
    private static func pushResponse(_ L: OpaquePointer, status: Int, headers: [(String, String)], body: UnsafeRawBufferPointer) -> Int32 {
        guard Lua.memoryLeft(L) > body.count + 16 * 1024 else { return fail(L, "too_large") }
        lua_createtable(L, 0, 3)
        lua_pushinteger(L, lua_Integer(status))
        lua_setfield(L, -2, "status")
        Lua.push(L, bytes: body)
        lua_setfield(L, -2, "body")
        // Lower-case names; a repeated field's values joined with ", " (RFC 9110 5.3).
        lua_createtable(L, 0, Int32(min(headers.count, 100)))
        for (name, value) in headers.prefix(100) {
            let lower = name.lowercased()
            Lua.push(L, lower)
            if Lua.rawField(L, -2, lower) == LUA_TSTRING, let previous = Lua.string(L, -1) {
                mg_pop(L, 1)
                Lua.push(L, previous + ", " + value)
            } else {
                mg_pop(L, 1)
                Lua.push(L, value)
            }
            lua_rawset(L, -3)
        }
        lua_setfield(L, -2, "headers")
        return 1
    }
}
