import CLuaRuntime
import Scripting

/// Reads header fields for scripts: a parsed head's fields with a script's edits applied.
///
/// It borrows what it reads (pointers valid only inside the `with...` call that lends them)
/// rather than holding copies: copies of the arrays cost a dozen reference-count operations
/// on every `request.header` call, the most frequent call scripts make.
struct HeaderView {
    let p: UnsafeRawBufferPointer
    let fields: UnsafeBufferPointer<HeaderField>
    let editsPointer: UnsafePointer<HeaderEdits>

    var edits: HeaderEdits {
        unsafeAddress { editsPointer }
    }

    /// Lends a view of `fields` in `p` with `edits` to `body`.
    static func with<R>(
        _ p: UnsafeRawBufferPointer, _ fields: UnsafeBufferPointer<HeaderField>, _ edits: inout HeaderEdits, _ body: (HeaderView) -> R
    ) -> R {
        withUnsafePointer(to: &edits) { body(HeaderView(p: p, fields: fields, editsPointer: $0)) }
    }

    /// Calls `body` with each value of the field `name` (any case), in order, until it returns false.
    func forEach(_ name: UnsafeRawBufferPointer, _ body: (UnsafeRawBufferPointer) -> Bool) {
        if edits.isEmpty || !edits.replaces(named: name) {
            for field in fields where field.name.count == name.count && HTTPBytes.equalsIgnoringCase(p, field.name.lower, name, 0, name.count) {
                if !body(UnsafeRawBufferPointer(rebasing: p[field.value.lower..<field.value.upper])) { return }
            }
        }
        if !edits.isEmpty { _ = edits.forEachValue(named: name, body) }
    }

    /// Pushes the first value, or nil.
    func pushFirst(_ L: OpaquePointer, _ name: UnsafeRawBufferPointer) {
        var found = false
        forEach(name) { value in
            Lua.push(L, bytes: value)
            found = true
            return false
        }
        if !found { lua_pushnil(L) }
    }

    /// Pushes a list of every value.
    func pushAll(_ L: OpaquePointer, _ name: UnsafeRawBufferPointer) {
        lua_createtable(L, 2, 0)
        var n: lua_Integer = 0
        forEach(name) { value in
            Lua.push(L, bytes: value)
            n += 1
            lua_rawseti(L, -2, n)
            return true
        }
    }

    /// Pushes a table of lower-case names to values (a list when a name repeats).
    func pushTable(_ L: OpaquePointer) {
        var names: [[UInt8]] = []
        for field in fields {
            let lower = (0..<field.name.count).map { HTTPBytes.lower(p[field.name.lower + $0]) }
            if !names.contains(lower) { names.append(lower) }
        }
        edits.forEach { name, _ in
            let lower = name.map { HTTPBytes.lower($0) }
            if !names.contains(lower) { names.append(lower) }
        }
        lua_createtable(L, 0, Int32(names.count))
        for name in names {
            var values: [[UInt8]] = []
            name.withUnsafeBytes { n in forEach(n) { values.append(Array($0)); return true } }
            if values.isEmpty { continue }
            name.withUnsafeBytes { Lua.push(L, bytes: $0) }
            if values.count == 1 {
                values[0].withUnsafeBytes { Lua.push(L, bytes: $0) }
            } else {
                lua_createtable(L, Int32(values.count), 0)
                for (i, v) in values.enumerated() {
                    v.withUnsafeBytes { Lua.push(L, bytes: $0) }
                    lua_rawseti(L, -2, lua_Integer(i + 1))
                }
            }
            lua_rawset(L, -3)
        }
    }
}

/// What `header(name)`, `header_values(name)` and `headers()` push, in either module.
enum HeaderRead {
    case first, all, table

    /// Reads the name argument (but for `.table`) and pushes from the view `withView` lends.
    func push(_ L: OpaquePointer, _ function: String, _ withView: ((HeaderView) -> Void) -> Void) -> Int32 {
        var name = UnsafeRawBufferPointer(start: nil, count: 0)
        if self != .table {
            // Valid while the argument stays on the stack, which it does for this call.
            guard let bytes = Lua.bytes(L, 1) else { return Lua.raise(L, "\(function): the name must be a string") }
            name = bytes
        }
        withView { view in
            switch self {
            case .first: view.pushFirst(L, name)
            case .all: view.pushAll(L, name)
            case .table: view.pushTable(L)
            }
        }
        return 1
    }
}
