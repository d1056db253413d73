import CLuaRuntime
import NIOCore
import Scripting

/// `body()` and `set_body()` of `request` and `response`: the same calls on the request's
/// side or on the response's, which differ only in where the body comes from and goes.
struct BodySide {
    let name: String
    /// Collects the whole body, up to a cap, without consuming it unless it is all there.
    let collect: (PolicySession, Int) -> BodyCollect
    /// Suspends the script until more of the body arrives.
    let wait: (PolicySession, BodyWait) -> Void
    /// Keeps the body that goes on (read, or replaced).
    let keep: (PolicySession, ByteBuffer) -> Void
    /// A malformed chunked body.
    let malformed: (OpaquePointer, PolicySession) -> Int32

    static var request: BodySide { BodySide(
        name: "request", collect: { $0.stream?.collectRequestBody(max: $1) ?? .tooLarge }, wait: { $0.waitForRequestBody($1) },
        keep: { $0.edits.body = $1 },
        malformed: { L, h in h.answerMalformedBody(L) }) }

    static var response: BodySide { BodySide(
        name: "response", collect: { $0.stream?.collectResponseBody(max: $1) ?? .tooLarge }, wait: { $0.waitForResponseBody($1) },
        keep: { $0.responseEdits.body = $1 },
        malformed: { L, _ in Lua.raise(L, "response.body: the upstream's chunked body is malformed") }) }

    /// `body([max])`: the body, `nil, reason` if larger than `cap`, or a wait.
    func read(_ L: OpaquePointer, _ h: PolicySession, cap: Int) -> Int32 {
        let collected = collect(h, cap)
        if case .pending = collected {
            wait(h, BodyWait(max: cap))
            return Lua.yield(L)
        }
        if case .malformed = collected { return malformed(L, h) }
        return resumed(L, h, collected, BodyWait(max: cap))
    }

    /// `set_body(body, [max])`: `true` once the original is read and dropped, `nil, reason`
    /// if it is larger than `cap`, or a wait.
    func replace(_ L: OpaquePointer, _ h: PolicySession, with replacement: ByteBuffer, cap: Int) -> Int32 {
        let wait = BodyWait(max: cap, replacement: replacement)
        let collected = collect(h, cap)
        if case .pending = collected {
            self.wait(h, wait)
            return Lua.yield(L)
        }
        if case .malformed = collected { return malformed(L, h) }
        return resumed(L, h, collected, wait)
    }

    /// Pushes the results of a `body` or `set_body` call whose body is in (or too large).
    func resumed(_ L: OpaquePointer, _ h: PolicySession, _ collected: BodyCollect, _ wait: BodyWait) -> Int32 {
        guard case .done(let body) = collected else { return Self.pushTooLarge(L, wait.max) }
        if let replacement = wait.replacement {
            keep(h, replacement)
            lua_pushboolean(L, 1)
            return 1
        }
        keep(h, body)
        return Self.pushBody(L, body, function: "\(name).body")
    }

    /// `body()`'s cap when the script gives none.
    static let defaultMax = 1 << 20

    /// The cap a script gave at `index` (nil when it is not a non-negative integer).
    static func cap(_ L: OpaquePointer, _ index: Int32) -> Int? {
        if Lua.isNoneOrNil(L, index) { return defaultMax }
        guard let cap = Lua.integer(L, index), cap >= 0 else { return nil }
        return cap
    }

    /// Pushes a body for the script, unless it would not fit its memory budget.
    static func pushBody(_ L: OpaquePointer, _ body: ByteBuffer, function: String) -> Int32 {
        guard body.readableBytes < Lua.memoryLeft(L) else {
            return Lua.raise(L, "\(function): the body (\(body.readableBytes) bytes) does not fit the script's memory budget")
        }
        body.withUnsafeReadableBytes { Lua.push(L, bytes: $0) }
        return 1
    }

    static func pushTooLarge(_ L: OpaquePointer, _ max: Int) -> Int32 {
        lua_pushnil(L)
        Lua.push(L, "body larger than \(max) bytes")
        return 2
    }
}
