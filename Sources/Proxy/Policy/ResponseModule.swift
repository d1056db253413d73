import CLuaRuntime
import NIOCore
import Scripting

/// The `response` module: the upstream's answer in the response phase (status and headers,
/// changeable), and what the client got in the log phase. See docs/lua-api.md.
struct ResponseModule: LuaModule {
    let name = "response"

    func register(_ L: OpaquePointer) {
        Lua.setFunction(L, "status") { L in
            let L = L!
            guard let h = answered(L) else { return notAnswered(L, "response.status") }
            let status = h.scriptPhase == .log ? h.sentStatus : (h.responseEdits.status ?? h.response.status)
            lua_pushinteger(L, lua_Integer(status))
            return 1
        }
        Lua.setFunction(L, "set_status") { L in
            let L = L!
            guard let h = answering(L) else { return notAnswering(L, "response.set_status") }
            guard let status = Lua.integer(L, 1), (200...599).contains(status) else {
                return Lua.raise(L, "response.set_status: the status must be an integer from 200 to 599")
            }
            h.responseEdits.status = status
            return 0
        }
        Lua.setFunction(L, "header") { L in
            let L = L!
            guard let h = answered(L) else { return notAnswered(L, "response.header") }
            guard let name = Lua.bytes(L, 1) else { return Lua.raise(L, "response.header: the name must be a string") }
            let lower = HeaderCheck.lowered(name)
            h.withResponseHeaders { $0.pushFirst(L, lower) }
            return 1
        }
        Lua.setFunction(L, "header_values") { L in
            let L = L!
            guard let h = answered(L) else { return notAnswered(L, "response.header_values") }
            guard let name = Lua.bytes(L, 1) else { return Lua.raise(L, "response.header_values: the name must be a string") }
            let lower = HeaderCheck.lowered(name)
            h.withResponseHeaders { $0.pushAll(L, lower) }
            return 1
        }
        Lua.setFunction(L, "headers") { L in
            let L = L!
            guard let h = answered(L) else { return notAnswered(L, "response.headers") }
            h.withResponseHeaders { $0.pushTable(L) }
            return 1
        }
        Lua.setFunction(L, "body") { L in
            let L = L!
            guard let h = answered(L) else { return notAnswered(L, "response.body") }
            guard let cap = responseBodyCap(L, 1) else { return Lua.raise(L, "response.body: the cap must be a non-negative integer") }
            if h.scriptPhase == .log {
                guard let body = h.responseEdits.body else { return Lua.raise(L, "response.body: read it in the response phase") }
                return RequestModule.pushBody(L, body, function: "response.body")
            }
            switch h.collectResponseBody(max: cap) {
            case .done(let body):
                h.responseEdits.body = body
                return RequestModule.pushBody(L, body, function: "response.body")
            case .tooLarge: return RequestModule.pushTooLarge(L, cap)
            case .malformed: return Lua.raise(L, "response.body: the upstream's chunked body is malformed")
            case .pending:
                h.waitForResponseBody(BodyWait(max: cap))
                return Lua.yield(L)
            }
        }
        Lua.setFunction(L, "set_body") { L in
            let L = L!
            guard let h = answering(L) else { return notAnswering(L, "response.set_body") }
            guard let bytes = Lua.bytes(L, 1) else { return Lua.raise(L, "response.set_body: the body must be a string") }
            var replacement = h.allocator.buffer(capacity: bytes.count)
            replacement.writeBytes(bytes)
            let cap = responseBodyCap(L, 2) ?? RequestModule.defaultBodyMax
            switch h.collectResponseBody(max: cap) {
            case .done:
                h.responseEdits.body = replacement
                lua_pushboolean(L, 1)
                return 1
            case .tooLarge: return RequestModule.pushTooLarge(L, cap)
            case .malformed: return Lua.raise(L, "response.set_body: the upstream's chunked body is malformed")
            case .pending:
                h.waitForResponseBody(BodyWait(max: cap, replacement: replacement))
                return Lua.yield(L)
            }
        }
        Lua.setFunction(L, "set_header") { L in editResponseHeader(L!, "response.set_header", add: false) }
        Lua.setFunction(L, "add_header") { L in editResponseHeader(L!, "response.add_header", add: true) }
        Lua.setFunction(L, "remove_header") { L in
            let L = L!
            lua_settop(L, 1)
            return editResponseHeader(L, "response.remove_header", add: false)
        }
    }
}

private func responseBodyCap(_ L: OpaquePointer, _ index: Int32) -> Int? {
    if Lua.isNoneOrNil(L, index) { return RequestModule.defaultBodyMax }
    guard let cap = Lua.integer(L, index), cap >= 0 else { return nil }
    return cap
}

/// The request, once an answer exists (response and log phases).
private func answered(_ L: OpaquePointer) -> DownstreamConnectionHandler? {
    guard let h = serving(L), h.scriptPhase != .access else { return nil }
    return h
}

/// The request, while its answer may still change (response phase).
private func answering(_ L: OpaquePointer) -> DownstreamConnectionHandler? {
    guard let h = serving(L), h.scriptPhase == .response else { return nil }
    return h
}

private func notAnswered(_ L: OpaquePointer, _ function: String) -> Int32 {
    if serving(L) == nil { return notServing(L, function) }
    return Lua.raise(L, "\(function): only in the response and log phases")
}

private func notAnswering(_ L: OpaquePointer, _ function: String) -> Int32 {
    if serving(L) == nil { return notServing(L, function) }
    return Lua.raise(L, "\(function): only in the response phase (in log, the response has been sent)")
}

private func editResponseHeader(_ L: OpaquePointer, _ function: String, add: Bool) -> Int32 {
    guard let h = answering(L) else { return notAnswering(L, function) }
    switch checkedHeader(L, function, managed: [], allowNil: !add) {
    case .failure(let message):
        return Lua.raise(L, message.text)
    case .success(let (name, lower, value)):
        if add, let value { h.responseEdits.headers.add(name, lower: lower, value) } else { h.responseEdits.headers.set(name, lower: lower, value) }
        return 0
    }
}

extension DownstreamConnectionHandler {
    /// The upstream's response headers with the script's edits (none after a local answer).
    func withResponseHeaders(_ body: (HeaderView) -> Void) {
        if let head = responseHeadKept {
            head.withUnsafeReadableBytes { p in body(HeaderView(p: p, fields: response.headers.fields, edits: responseEdits.headers)) }
        } else {
            body(HeaderView(p: UnsafeRawBufferPointer(start: nil, count: 0), fields: [], edits: responseEdits.headers))
        }
    }
}
