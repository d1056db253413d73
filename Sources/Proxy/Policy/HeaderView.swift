import CLuaRuntime
import Scripting

/// Reads header fields for scripts: a parsed head's fields with a script's edits applied.
struct HeaderView {
    let p: UnsafeRawBufferPointer
    let fields: [HeaderField]
    let edits: HeaderEdits

    /// Calls `body` with each value of the field named `lower`, in order, until it returns false.
    func forEach(_ lower: [UInt8], _ body: (UnsafeRawBufferPointer) -> Bool) {
        let entry = edits.entry(lower)
        if entry?.replaces != true {
            for field in fields where field.name.count == lower.count && matches(field.name, lower) {
                if !body(UnsafeRawBufferPointer(rebasing: p[field.value.lower..<field.value.upper])) { return }
            }
        }
        for value in entry?.values ?? [] {
            let more = value.withUnsafeBytes { body($0) }
            if !more { return }
        }
    }

    private func matches(_ name: ByteRange, _ lower: [UInt8]) -> Bool {
        for k in 0..<lower.count where HTTPBytes.lower(p[name.lower + k]) != lower[k] { return false }
        return true
    }

    /// Pushes the first value, or nil.
    func pushFirst(_ L: OpaquePointer, _ lower: [UInt8]) {
        var found = false
        forEach(lower) { value in
            Lua.push(L, bytes: value)
            found = true
            return false
        }
        if !found { lua_pushnil(L) }
    }

    /// Pushes a list of every value.
    func pushAll(_ L: OpaquePointer, _ lower: [UInt8]) {
        lua_createtable(L, 2, 0)
        var n: lua_Integer = 0
        forEach(lower) { value in
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
        for entry in edits.entries where !names.contains(entry.lower) { names.append(entry.lower) }
        lua_createtable(L, 0, Int32(names.count))
        for name in names {
            var values: [[UInt8]] = []
            forEach(name) { values.append(Array($0)); return true }
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
        var lower: [UInt8] = []
        if self != .table {
            guard let name = Lua.bytes(L, 1) else { return Lua.raise(L, "\(function): the name must be a string") }
            lower = HeaderCheck.lowered(name)
        }
        withView { view in
            switch self {
            case .first: view.pushFirst(L, lower)
            case .all: view.pushAll(L, lower)
            case .table: view.pushTable(L)
            }
        }
        return 1
    }
}
