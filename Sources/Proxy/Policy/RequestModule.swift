import CLuaRuntime
import NIOCore
import Scripting
import TLS
import Config

/// The `request` module: the request being served, read and changed by its policy.
/// Changes are recorded as edits and applied when the upstream head is written, so a
/// request no script touches costs nothing extra. See docs/lua-api.md.
struct RequestModule: LuaModule {
    let name = "request"

    /// The cap a script asked for at `index`, bounded by the route's body limit.
    static func bodyCap(_ L: OpaquePointer, _ index: Int32, _ h: PolicySession) -> Int? {
        guard var cap = BodySide.cap(L, index) else { return nil }
        if let route = h.exchange.route, route.maxBodyBytes > 0 { cap = min(cap, route.maxBodyBytes) }
        return cap
    }

    func register(_ L: OpaquePointer) {
        Lua.setFunction(L, "method") { L in
            let L = L!
            guard let h = serving(L) else { return notServing(L, "request.method") }
            h.withRequestBytes { p in Lua.push(L, bytes: slice(p, h.exchange.request.method)) }
            return 1
        }
        Lua.setFunction(L, "path") { L in
            let L = L!
            guard let h = serving(L) else { return notServing(L, "request.path") }
            if let path = h.edits.path {
                path.withUnsafeBytes { Lua.push(L, bytes: $0) }
            } else {
                h.withRequestBytes { p in Lua.push(L, bytes: slice(p, h.exchange.request.path)) }
            }
            return 1
        }
        // A gRPC call's service and method, from its path `/package.Service/Method`; nil for
        // a request that is not gRPC (no `content-type: application/grpc`).
        Lua.setFunction(L, "grpc") { L in
            let L = L!
            guard let h = serving(L) else { return notServing(L, "request.grpc") }
            guard h.exchange.request.headers.grpc else {
                lua_pushnil(L)
                return 1
            }
            return h.withRequestBytes { p in
                let path = slice(p, h.exchange.request.path)
                let slash = UInt8(ascii: "/")
                guard path.count > 3, path[0] == slash, let split = path.lastIndex(of: slash), split > 1, split < path.count - 1 else {
                    lua_pushnil(L)
                    return 1
                }
                Lua.push(L, bytes: UnsafeRawBufferPointer(rebasing: path[1..<split]))
                Lua.push(L, bytes: UnsafeRawBufferPointer(rebasing: path[(split + 1)...]))
                return 2
            }
        }
        Lua.setFunction(L, "query") { L in
            let L = L!
            guard let h = serving(L) else { return notServing(L, "request.query") }
            h.withQuery { query in
                if let query { Lua.push(L, bytes: query) } else { lua_pushnil(L) }
            }
            return 1
        }
        Lua.setFunction(L, "query_arg") { L in
            let L = L!
            guard let h = serving(L) else { return notServing(L, "request.query_arg") }
            guard let wanted = Lua.bytes(L, 1).map(Array.init) else { return Lua.raise(L, "request.query_arg: the name must be a string") }
            var found = false
            h.withQuery { query in
                guard let query else { return }
                QueryString.forEach(query) { key, value in
                    guard key == wanted else { return true }
                    value.withUnsafeBytes { Lua.push(L, bytes: $0) }
                    found = true
                    return false
                }
            }
            if !found { lua_pushnil(L) }
            return 1
        }
        Lua.setFunction(L, "query_args") { L in
            let L = L!
            guard let h = serving(L) else { return notServing(L, "request.query_args") }
            lua_createtable(L, 0, 4)
            h.withQuery { query in
                guard let query else { return }
                var count = 0
                QueryString.forEach(query) { key, value in
                    count += 1
                    key.withUnsafeBytes { Lua.push(L, bytes: $0) }
                    let existing = lua_rawget(L, -2)
                    if existing == LUA_TNIL {
                        mg_pop(L, 1)
                        key.withUnsafeBytes { Lua.push(L, bytes: $0) }
                        value.withUnsafeBytes { Lua.push(L, bytes: $0) }
                        lua_rawset(L, -3)
                    } else if existing == LUA_TSTRING {
                        // A repeated name: its values become a list.
                        lua_createtable(L, 2, 0)
                        mg_insert(L, -2)
                        lua_rawseti(L, -2, 1)
                        value.withUnsafeBytes { Lua.push(L, bytes: $0) }
                        lua_rawseti(L, -2, 2)
                        key.withUnsafeBytes { Lua.push(L, bytes: $0) }
                        mg_insert(L, -2)
                        lua_rawset(L, -3)
                    } else {
                        value.withUnsafeBytes { Lua.push(L, bytes: $0) }
                        lua_rawseti(L, -2, lua_Integer(lua_rawlen(L, -2)) + 1)
                        mg_pop(L, 1)
                    }
                    return count < QueryString.maxArguments
                }
            }
            return 1
        }
        Lua.setFunction(L, "set_path") { L in
            let L = L!
            guard let h = changing(L) else { return notChanging(L, "request.set_path") }
            guard let path = Lua.bytes(L, 1) else { return Lua.raise(L, "request.set_path: the path must be a string") }
            if let problem = TargetCheck.path(path, limit: h.exchange.generation?.shared.limits.maxURIBytes ?? 8192) {
                return Lua.raise(L, "request.set_path: \(problem)")
            }
            h.edits.path = Array(path)
            return 0
        }
        Lua.setFunction(L, "set_query") { L in
            let L = L!
            guard let h = changing(L) else { return notChanging(L, "request.set_query") }
            switch lua_type(L, 1) {
            case LUA_TNONE, LUA_TNIL:
                h.edits.query = []
            case LUA_TSTRING:
                var query = Lua.bytes(L, 1)!
                if query.first == UInt8(ascii: "?") { query = UnsafeRawBufferPointer(rebasing: query.dropFirst()) }
                if let problem = TargetCheck.query(query) { return Lua.raise(L, "request.set_query: \(problem)") }
                let limit = h.exchange.generation?.shared.limits.maxURIBytes ?? 8192
                if query.count > limit { return Lua.raise(L, "request.set_query: the query is longer than \(limit) bytes") }
                h.edits.query = Array(query)
            case LUA_TTABLE:
                guard let encoded = QueryString.encode(L, 1) else {
                    return Lua.raise(L, "request.set_query: a table's keys must be strings and its values strings, numbers, booleans or lists of them")
                }
                let limit = h.exchange.generation?.shared.limits.maxURIBytes ?? 8192
                if encoded.count > limit { return Lua.raise(L, "request.set_query: the query is longer than \(limit) bytes") }
                h.edits.query = encoded
            default:
                return Lua.raise(L, "request.set_query: expected a string, a table or nil, got \(Lua.typeName(L, 1))")
            }
            return 0
        }
        Lua.setFunction(L, "header") { L in requestHeaders(L!, "request.header", .first) }
        Lua.setFunction(L, "header_values") { L in requestHeaders(L!, "request.header_values", .all) }
        Lua.setFunction(L, "headers") { L in requestHeaders(L!, "request.headers", .table) }
        Lua.setFunction(L, "host") { L in
            let L = L!
            guard let h = serving(L) else { return notServing(L, "request.host") }
            DownstreamConnectionHandler.hostName.withUnsafeBytes { host in h.withRequestHeaders { $0.pushFirst(L, host) } }
            return 1
        }
        Lua.setFunction(L, "set_header") { L in editHeader(L!, "request.set_header", add: false) }
        Lua.setFunction(L, "add_header") { L in editHeader(L!, "request.add_header", add: true) }
        Lua.setFunction(L, "remove_header") { L in
            let L = L!
            lua_settop(L, 1)
            return editHeader(L, "request.remove_header", add: false)
        }
        Lua.setFunction(L, "body") { L in
            let L = L!
            guard let h = serving(L) else { return notServing(L, "request.body") }
            guard let cap = RequestModule.bodyCap(L, 1, h) else { return Lua.raise(L, "request.body: the cap must be a non-negative integer") }
            if h.exchange.route == nil { return Lua.raise(L, "request.body: not in a router (read it in the route's access phase)") }
            if h.phase != .access {
                // After access the body went upstream as a stream, unless a script read it.
                guard let body = h.edits.body else { return Lua.raise(L, "request.body: read it in the access phase") }
                return BodySide.pushBody(L, body, function: "request.body")
            }
            return BodySide.request.read(L, h, cap: cap)
        }
        Lua.setFunction(L, "set_body") { L in
            let L = L!
            guard let h = changing(L) else { return notChanging(L, "request.set_body") }
            if h.exchange.route == nil { return Lua.raise(L, "request.set_body: not in a router (set it in the route's access phase)") }
            guard let bytes = Lua.bytes(L, 1) else { return Lua.raise(L, "request.set_body: the body must be a string") }
            guard let cap = RequestModule.bodyCap(L, 2, h) else { return Lua.raise(L, "request.set_body: the cap must be a non-negative integer") }
            var replacement = h.allocator.buffer(capacity: bytes.count)
            replacement.writeBytes(bytes)
            return BodySide.request.replace(L, h, with: replacement, cap: cap)
        }
        Lua.setFunction(L, "client_ip") { L in
            let L = L!
            guard let h = serving(L) else { return notServing(L, "request.client_ip") }
            (h.stream?.clientAddress ?? []).withUnsafeBytes { Lua.push(L, bytes: $0) }
            return 1
        }
        Lua.setFunction(L, "tls") { L in
            let L = L!
            guard let h = serving(L) else { return notServing(L, "request.tls") }
            guard let tls = h.stream?.tlsStream else {
                lua_pushnil(L)
                return 1
            }
            // {protocol, cipher, sni, client = {subject, fingerprint, names}}: nil fields are absent.
            lua_createtable(L, 0, 4)
            if let version = tls.protocolVersion { Lua.push(L, version); lua_setfield(L, -2, "protocol") }
            if let cipher = tls.cipher { Lua.push(L, cipher); lua_setfield(L, -2, "cipher") }
            if let name = tls.serverName { Lua.push(L, name); lua_setfield(L, -2, "sni") }
            if let peer = tls.peerCertificate {
                lua_createtable(L, 0, 3)
                Lua.push(L, peer.subject)
                lua_setfield(L, -2, "subject")
                Lua.push(L, peer.fingerprint)
                lua_setfield(L, -2, "fingerprint")
                Lua.push(L, strings: peer.names)
                lua_setfield(L, -2, "names")
                lua_setfield(L, -2, "client")
            }
            return 1
        }
        Lua.setFunction(L, "id") { L in
            let L = L!
            guard let h = serving(L) else { return notServing(L, "request.id") }
            h.exchange.requestID.withUnsafeReadableBytes { Lua.push(L, bytes: $0) }
            return 1
        }
        Lua.setFunction(L, "route") { L in
            let L = L!
            guard let h = serving(L) else { return notServing(L, "request.route") }
            (h.exchange.route?.nameBytes ?? []).withUnsafeBytes { Lua.push(L, bytes: $0) }
            return 1
        }
        Lua.setFunction(L, "upstream") { L in
            let L = L!
            guard let h = serving(L), let route = h.exchange.route, let generation = h.exchange.generation else { return notServing(L, "request.upstream") }
            Lua.push(L, generation.shared.config.upstreams[h.edits.upstream ?? route.upstream].name)
            return 1
        }
        Lua.setFunction(L, "set_upstream") { L in
            let L = L!
            guard let h = changing(L) else { return notChanging(L, "request.set_upstream") }
            guard let name = Lua.string(L, 1) else { return Lua.raise(L, "request.set_upstream: the name must be a string") }
            guard let index = h.exchange.generation?.shared.config.upstreamIndex(named: name) else {
                return Lua.raise(L, "request.set_upstream: unknown upstream \"\(name)\"")
            }
            h.edits.upstream = index
            return 0
        }
        Lua.setFunction(L, "respond") { L in
            let L = L!
            guard let h = changing(L) else { return notChanging(L, "request.respond") }
            guard let status = Lua.integer(L, 1), (200...599).contains(status) else {
                return Lua.raise(L, "request.respond: the status must be an integer from 200 to 599")
            }
            var early = EarlyResponse(status: status, body: h.allocator.buffer(capacity: 0))
            switch lua_type(L, 2) {
            case LUA_TNONE, LUA_TNIL: break
            case LUA_TSTRING: early.body.writeBytes(Lua.bytes(L, 2)!)
            default: return Lua.raise(L, "request.respond: the body must be a string or nil, got \(Lua.typeName(L, 2))")
            }
            if !Lua.isNoneOrNil(L, 3) {
                if let problem = readHeaderTable(L, 3, into: &early.headers) { return Lua.raise(L, "request.respond: \(problem)") }
            }
            h.edits.early = early
            // Nothing after respond runs, as with ngx.exit or Envoy's respond().
            return Lua.yield(L)
        }
    }
}

// MARK: helpers shared with the response module

@inline(__always)
func serving(_ L: OpaquePointer) -> PolicySession? {
    guard let p = Lua.current(L) else { return nil }
    return Unmanaged<PolicySession>.fromOpaque(p).takeUnretainedValue()
}

/// The request, if the running phase may still change it (access).
@inline(__always)
func changing(_ L: OpaquePointer) -> PolicySession? {
    guard let h = serving(L), h.phase == .access else { return nil }
    return h
}

func notServing(_ L: OpaquePointer, _ function: String) -> Int32 {
    Lua.raise(L, "\(function): only available while serving a request (not when the module loads)")
}

func notChanging(_ L: OpaquePointer, _ function: String) -> Int32 {
    if serving(L) == nil { return notServing(L, function) }
    return Lua.raise(L, "\(function): only in the access phase (the request has gone upstream)")
}

@inline(__always)
func slice(_ p: UnsafeRawBufferPointer, _ r: ByteRange) -> UnsafeRawBufferPointer {
    UnsafeRawBufferPointer(rebasing: p[r.lower..<r.upper])
}

private func requestHeaders(_ L: OpaquePointer, _ function: String, _ read: HeaderRead) -> Int32 {
    guard let h = serving(L) else { return notServing(L, function) }
    return read.push(L, function) { h.withRequestHeaders($0) }
}

/// `set_header(name, value)`, `add_header(name, value)`, `remove_header(name)` for requests.
private func editHeader(_ L: OpaquePointer, _ function: String, add: Bool) -> Int32 {
    guard let h = changing(L) else { return notChanging(L, function) }
    switch checkedHeader(L, function, forwarding: true, allowNil: !add) {
    case .failure(let message):
        return Lua.raise(L, message.text)
    case .success(let (name, value)):
        guard h.edits.headers.fits(name.count + (value?.count ?? 0)) else {
            return Lua.raise(L, "\(function): the script's header changes exceed \(HeaderEdits.maxBytes / 1024) KiB")
        }
        if add, let value { h.edits.headers.add(name, value) } else { h.edits.headers.set(name, value) }
        return 0
    }
}

struct ScriptMessage: Error {
    let text: String
}

/// The header name at 1 and value at 2 (a string or number; nil only when `allowNil`), as
/// views of the Lua strings on the stack: valid until the calling function returns.
/// `forwarding`: the X-Forwarded-* and X-Request-Id fields the gateway writes are refused too.
func checkedHeader(
    _ L: OpaquePointer, _ function: String, forwarding: Bool, allowNil: Bool
) -> Result<(UnsafeRawBufferPointer, UnsafeRawBufferPointer?), ScriptMessage> {
    guard let name = Lua.bytes(L, 1) else { return .failure(ScriptMessage(text: "\(function): the name must be a string")) }
    if let problem = HeaderCheck.name(name) { return .failure(ScriptMessage(text: "\(function): \(problem)")) }
    if HeaderCheck.isFraming(name) || HeaderCheck.isProxy(name) || forwarding && HeaderCheck.isForwarding(name) {
        return .failure(ScriptMessage(text: "\(function): \(String(decoding: name, as: UTF8.self)) is managed by the gateway"))
    }
    switch lua_type(L, 2) {
    case LUA_TNONE, LUA_TNIL:
        guard allowNil else { return .failure(ScriptMessage(text: "\(function): the value must be a string or a number")) }
        return .success((name, nil))
    case LUA_TSTRING, LUA_TNUMBER:
        var length = 0
        let value = UnsafeRawBufferPointer(start: lua_tolstring(L, 2, &length), count: length)
        if let problem = HeaderCheck.value(value) { return .failure(ScriptMessage(text: "\(function): \(problem)")) }
        return .success((name, HeaderCheck.trimmed(value)))
    default:
        return .failure(ScriptMessage(text: "\(function): the value must be a string or a number, got \(Lua.typeName(L, 2))"))
    }
}

/// Reads `{name = value | {values...}}` at `index` into `edits`; the reason when refused.
func readHeaderTable(_ L: OpaquePointer, _ index: Int32, into edits: inout HeaderEdits) -> String? {
    guard lua_type(L, index) == LUA_TTABLE else { return "headers must be a table" }
    /// Adds one value (the string at `at`); the reason when refused.
    func addValue(_ name: UnsafeRawBufferPointer, _ at: Int32) -> String? {
        var length = 0
        let value = HeaderCheck.trimmed(UnsafeRawBufferPointer(start: lua_tolstring(L, at, &length), count: length))
        if let problem = HeaderCheck.value(value) { return problem }
        guard edits.fits(name.count + value.count) else { return "the headers exceed \(HeaderEdits.maxBytes / 1024) KiB" }
        edits.add(name, value)
        return nil
    }
    lua_pushnil(L)
    while lua_next(L, index) != 0 {
        // Keys are never converted in place (that would confuse lua_next): only strings pass.
        guard lua_type(L, -2) == LUA_TSTRING, let name = Lua.bytes(L, -2) else {
            lua_settop(L, index)
            return "header names must be strings"
        }
        if let problem = HeaderCheck.name(name) {
            lua_settop(L, index)
            return problem
        }
        if HeaderCheck.isFraming(name) {
            lua_settop(L, index)
            return "\(String(decoding: name, as: UTF8.self)) is managed by the gateway"
        }
        var problem: String?
        switch lua_type(L, -1) {
        case LUA_TTABLE:
            let count = min(Int(lua_rawlen(L, -1)), 100)
            for i in 0..<count where problem == nil {
                let t = lua_rawgeti(L, -1, lua_Integer(i + 1))
                if t == LUA_TSTRING || t == LUA_TNUMBER { problem = addValue(name, lua_gettop(L)) }
                mg_pop(L, 1)
            }
        case LUA_TSTRING, LUA_TNUMBER:
            problem = addValue(name, -1)
        default:
            problem = "header values must be strings, numbers or lists of them"
        }
        if let problem {
            lua_settop(L, index)
            return problem
        }
        mg_pop(L, 1)
    }
    return nil
}

extension PolicySession {
    /// The request head's bytes, for reading what the parser's ranges point at.
    @inline(__always)
    func withRequestBytes<R>(_ body: (UnsafeRawBufferPointer) -> R) -> R {
        // In place: `requestHead ?? ByteBuffer()` would copy the buffer (a retain and a release).
        requestHead?.withUnsafeReadableBytes(body) ?? body(UnsafeRawBufferPointer(start: nil, count: 0))
    }

    /// The request's header fields with the script's edits.
    func withRequestHeaders(_ body: (HeaderView) -> Void) {
        withRequestBytes { p in
            exchange.request.headers.fields.withUnsafeBufferPointer { fields in HeaderView.with(p, fields, &edits.headers, body) }
        }
    }

    /// The query as the upstream will get it (without `?`), or nil when there is none.
    func withQuery<R>(_ body: (UnsafeRawBufferPointer?) -> R) -> R {
        if let query = edits.query { return query.isEmpty ? body(nil) : query.withUnsafeBytes { body($0) } }
        return withRequestBytes { p in
            guard exchange.request.path.upper < exchange.request.target.upper else { return body(nil) }
            return body(UnsafeRawBufferPointer(rebasing: p[(exchange.request.path.upper + 1)..<exchange.request.target.upper]))
        }
    }
}
