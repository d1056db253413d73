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
            let status = h.phase == .log ? h.exchange.sentStatus : (h.responseEdits.status ?? h.exchange.response.status)
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
        Lua.setFunction(L, "header") { L in responseHeaders(L!, "response.header", .first) }
        Lua.setFunction(L, "header_values") { L in responseHeaders(L!, "response.header_values", .all) }
        Lua.setFunction(L, "headers") { L in responseHeaders(L!, "response.headers", .table) }
        Lua.setFunction(L, "body") { L in
            let L = L!
            guard let h = answered(L) else { return notAnswered(L, "response.body") }
            guard let cap = BodySide.cap(L, 1) else { return Lua.raise(L, "response.body: the cap must be a non-negative integer") }
            if h.phase == .log {
                guard let body = h.responseEdits.body else { return Lua.raise(L, "response.body: read it in the response phase") }
                return BodySide.pushBody(L, body, function: "response.body")
            }
            return BodySide.response.read(L, h, cap: cap)
        }
        Lua.setFunction(L, "set_body") { L in
            let L = L!
            guard let h = answering(L) else { return notAnswering(L, "response.set_body") }
            guard let bytes = Lua.bytes(L, 1) else { return Lua.raise(L, "response.set_body: the body must be a string") }
            guard let cap = BodySide.cap(L, 2) else { return Lua.raise(L, "response.set_body: the cap must be a non-negative integer") }
            var replacement = h.allocator.buffer(capacity: bytes.count)
            replacement.writeBytes(bytes)
            return BodySide.response.replace(L, h, with: replacement, cap: cap)
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

private func responseHeaders(_ L: OpaquePointer, _ function: String, _ read: HeaderRead) -> Int32 {
    guard let h = answered(L) else { return notAnswered(L, function) }
    return read.push(L, function) { h.withResponseHeaders($0) }
}

/// The request, once an answer exists (response and log phases).
private func answered(_ L: OpaquePointer) -> PolicySession? {
    guard let h = serving(L), h.phase != .access else { return nil }
    return h
}

/// The request, while its answer may still change (response phase).
private func answering(_ L: OpaquePointer) -> PolicySession? {
    guard let h = serving(L), h.phase == .response else { return nil }
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

/// Header edits may be made in access too (CORS, correlation ids, rate-limit headers): they
/// apply to whatever answer the client gets, the upstream's or an early one.
private func editResponseHeader(_ L: OpaquePointer, _ function: String, add: Bool) -> Int32 {
    guard let h = serving(L), h.phase != .log else {
        if serving(L) == nil { return notServing(L, function) }
        return Lua.raise(L, "\(function): only in the access and response phases (in log, the response has been sent)")
    }
    switch checkedHeader(L, function, forwarding: false, allowNil: !add) {
    case .failure(let message):
        return Lua.raise(L, message.text)
    case .success(let (name, value)):
        guard h.responseEdits.headers.fits(name.count + (value?.count ?? 0)) else {
            return Lua.raise(L, "\(function): the script's header changes exceed \(HeaderEdits.maxBytes / 1024) KiB")
        }
        if add, let value { h.responseEdits.headers.add(name, value) } else { h.responseEdits.headers.set(name, value) }
        return 0
    }
}

extension PolicySession {
    /// The upstream's response headers with the script's edits (none after a local answer).
    func withResponseHeaders(_ body: (HeaderView) -> Void) {
        if responseHead != nil {
            responseHead!.withUnsafeReadableBytes { p in
                exchange.response.headers.fields.withUnsafeBufferPointer { fields in HeaderView.with(p, fields, &responseEdits.headers, body) }
            }
        } else {
            HeaderView.with(UnsafeRawBufferPointer(start: nil, count: 0), UnsafeBufferPointer(start: nil, count: 0), &responseEdits.headers, body)
        }
    }
}
