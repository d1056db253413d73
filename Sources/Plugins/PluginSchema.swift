import CLuaRuntime
import Config
import Scripting

/// One field of a plugin's schema, read from the `schema` table its module returns:
/// `{type = "integer", required = true, default = 10, min = 1, max = 100, one_of = {...},
/// items = {...}, fields = {...}, values = {...}, description = "..."}`.
public struct SchemaField: Sendable, Hashable {
    public indirect enum Kind: Sendable, Hashable {
        case string, number, integer, boolean
        /// A list whose items each match the field.
        case array(SchemaField)
        /// A mapping with these named fields (and no others).
        case record([String: SchemaField])
        /// A mapping from any string to values matching the field.
        case map(SchemaField)

        var name: String {
            switch self {
            case .string: return "string"
            case .number: return "number"
            case .integer: return "integer"
            case .boolean: return "boolean"
            case .array: return "array"
            case .record: return "record"
            case .map: return "map"
            }
        }
    }

    public var kind: Kind
    public var required = false
    public var defaultValue: JSONValue?
    /// The values allowed (an enumeration).
    public var oneOf: [JSONValue]?
    /// Bounds: a number's value, a string's length in bytes, an array's or map's size.
    public var min: Double?
    public var max: Double?
    public var description: String?
    /// What a string must spell, checked at load: `cidr` (an address or a CIDR range).
    public var format: Format?

    public enum Format: String, Sendable, Hashable, CaseIterable {
        case cidr
    }

    public init(kind: Kind) { self.kind = kind }
}

/// A plugin's configuration schema: a record of fields.
public struct PluginSchema: Sendable, Hashable {
    public var fields: [String: SchemaField]

    public init(fields: [String: SchemaField]) { self.fields = fields }

    /// Checks `config` (as written, with its places) and returns it with defaults filled in;
    /// problems go to `problems`, each at the value it is about.
    public func validate(_ config: LocatedValue, into problems: inout [ConfigDiagnostic]) -> JSONValue? {
        Self.check(config, SchemaField(kind: .record(fields)), &problems)
    }

    static func check(_ value: LocatedValue, _ field: SchemaField, _ problems: inout [ConfigDiagnostic]) -> JSONValue? {
        func fail(_ message: String) -> JSONValue? {
            problems.append(value.problem(message))
            return nil
        }
        var result: JSONValue
        var size: Double?
        var value = value
        // Lua cannot tell an empty list from an empty table: `{}` is both.
        if case .array(let items) = value.kind, items.isEmpty {
            switch field.kind {
            case .record, .map: value.kind = .object([])
            default: break
            }
        }
        switch (field.kind, value.kind) {
        case (.string, .string(let s)):
            result = .string(s)
            size = Double(s.utf8.count)
        case (.number, .int(let i)): result = .int(i)
        case (.number, .double(let d)): result = .double(d)
        case (.integer, .int(let i)): result = .int(i)
        case (.integer, .double(let d)) where d.rounded() == d && abs(d) < 9e15: result = .int(Int(d))
        case (.boolean, .bool(let b)): result = .bool(b)
        case (.array(let item), .array(let items)):
            var out: [JSONValue] = []
            var ok = true
            for element in items {
                if let v = check(element, item, &problems) { out.append(v) } else { ok = false }
            }
            guard ok else { return nil }
            result = .array(out)
            size = Double(items.count)
        case (.map(let valueField), .object(let members)):
            var out: [String: JSONValue] = [:]
            var ok = true
            for member in members {
                if let v = check(member.value, valueField, &problems) { out[member.key] = v } else { ok = false }
            }
            guard ok else { return nil }
            result = .object(out)
            size = Double(members.count)
        case (.record(let fields), .object(let members)):
            var out: [String: JSONValue] = [:]
            var ok = true
            for member in members where fields[member.key] == nil {
                let known = fields.keys.sorted().joined(separator: ", ")
                problems.append(member.value.problem("unknown field \"\(member.key)\" (expected one of: \(known))"))
                ok = false
            }
            for (name, sub) in fields.sorted(by: { $0.key < $1.key }) {
                if let member = members.first(where: { $0.key == name }), member.value.kind != .null {
                    if let v = check(member.value, sub, &problems) { out[name] = v } else { ok = false }
                } else if let d = sub.defaultValue {
                    out[name] = d
                } else if sub.required {
                    let place = LocatedValue(.null, file: value.file, line: value.line, path: value.path.isEmpty ? name : "\(value.path).\(name)", pointer: JSONPointer.join(value.pointer, name))
                    problems.append(place.problem("required (\(describe(sub)))"))
                    ok = false
                }
            }
            guard ok else { return nil }
            result = .object(out)
        default:
            return fail("expected \(article(field.kind)), got \(value.shown)")
        }
        if field.format == .cidr, case .string(let s) = result, CIDR(parsing: s) == nil {
            return fail("expected an address or CIDR range such as 10.0.0.0/8 or 2001:db8::/32, got \(value.shown)")
        }
        if let allowed = field.oneOf, !allowed.contains(result) {
            return fail("expected one of: \(allowed.map(shown).joined(separator: ", ")); got \(value.shown)")
        }
        let measured: Double? = {
            switch result {
            case .int(let i): return Double(i)
            case .double(let d): return d
            default: return size
            }
        }()
        if let measured {
            let unit: String = {
                switch field.kind {
                case .string: return " bytes long"
                case .array, .map: return " entries"
                default: return ""
                }
            }()
            if let min = field.min, measured < min { return fail("expected at least \(number(min))\(unit), got \(unit.isEmpty ? value.shown : number(measured))") }
            if let max = field.max, measured > max { return fail("expected at most \(number(max))\(unit), got \(unit.isEmpty ? value.shown : number(measured))") }
        }
        return result
    }

    static func article(_ kind: SchemaField.Kind) -> String {
        switch kind {
        case .string: return "a string"
        case .number: return "a number"
        case .integer: return "an integer"
        case .boolean: return "true or false"
        case .array(let item): return "a list of \(plural(item.kind))"
        case .record: return "a mapping"
        case .map(let v): return "a mapping of names to \(plural(v.kind))"
        }
    }

    static func plural(_ kind: SchemaField.Kind) -> String {
        switch kind {
        case .string: return "strings"
        case .number: return "numbers"
        case .integer: return "integers"
        case .boolean: return "booleans"
        case .array: return "lists"
        case .record, .map: return "mappings"
        }
    }

    static func describe(_ field: SchemaField) -> String {
        if let d = field.description { return d }
        return article(field.kind)
    }

    static func shown(_ v: JSONValue) -> String {
        if case .string(let s) = v { return s }
        return v.canonicalText
    }

    static func number(_ d: Double) -> String {
        d.rounded() == d && abs(d) < 1e15 ? String(Int(d)) : "\(d)"
    }
}

// MARK: reading a schema from Lua

extension PluginSchema {
    static let fieldKeys: Set<String> = ["type", "required", "default", "one_of", "min", "max", "items", "fields", "values", "description", "format"]

    /// The schema table at `index` (a map of field names to field tables), read raw.
    static func read(_ L: OpaquePointer, _ index: Int32, plugin: String) throws(ScriptError) -> PluginSchema {
        PluginSchema(fields: try readFields(L, lua_absindex(L, index), path: "schema"))
    }

    private static func readFields(_ L: OpaquePointer, _ table: Int32, path: String) throws(ScriptError) -> [String: SchemaField] {
        guard lua_type(L, table) == LUA_TTABLE else { throw ScriptError(file: nil, line: nil, message: "\(path): expected a table of fields") }
        var out: [String: SchemaField] = [:]
        lua_pushnil(L)
        while lua_next(L, table) != 0 {
            guard let name = Lua.string(L, -2) else {
                lua_settop(L, table)
                throw ScriptError(file: nil, line: nil, message: "\(path): field names must be strings")
            }
            let field: SchemaField
            do {
                field = try readField(L, lua_gettop(L), path: "\(path).\(name)")
            } catch {
                lua_settop(L, table)
                throw error
            }
            out[name] = field
            mg_pop(L, 1)
        }
        return out
    }

    private static func readField(_ L: OpaquePointer, _ table: Int32, path: String) throws(ScriptError) -> SchemaField {
        func bad(_ message: String) -> ScriptError { ScriptError(file: nil, line: nil, message: "\(path): \(message)") }
        guard lua_type(L, table) == LUA_TTABLE else { throw bad("expected a field table such as {type = \"string\"}") }
        lua_pushnil(L)
        while lua_next(L, table) != 0 {
            let key = Lua.string(L, -2)
            mg_pop(L, 1)
            guard let key, fieldKeys.contains(key) else {
                lua_settop(L, table)
                throw bad("unknown key \(key.map { "\"\($0)\"" } ?? "(not a string)") (expected one of: \(fieldKeys.sorted().joined(separator: ", ")))")
            }
        }
        Lua.rawField(L, table, "type")
        let typeName = Lua.string(L, -1)
        mg_pop(L, 1)
        var kind: SchemaField.Kind
        switch typeName {
        case "string": kind = .string
        case "number": kind = .number
        case "integer": kind = .integer
        case "boolean": kind = .boolean
        case "array":
            guard Lua.rawField(L, table, "items") == LUA_TTABLE else { throw bad("an array needs items = {type = ...}") }
            let item = try readField(L, lua_gettop(L), path: "\(path).items")
            mg_pop(L, 1)
            kind = .array(item)
        case "record":
            guard Lua.rawField(L, table, "fields") == LUA_TTABLE else { throw bad("a record needs fields = {...}") }
            let fields = try readFields(L, lua_gettop(L), path: "\(path).fields")
            mg_pop(L, 1)
            kind = .record(fields)
        case "map":
            guard Lua.rawField(L, table, "values") == LUA_TTABLE else { throw bad("a map needs values = {type = ...}") }
            let values = try readField(L, lua_gettop(L), path: "\(path).values")
            mg_pop(L, 1)
            kind = .map(values)
        default:
            throw bad("type must be string, number, integer, boolean, array, record or map")
        }
        var field = SchemaField(kind: kind)
        if Lua.rawField(L, table, "required") != LUA_TNIL { field.required = lua_toboolean(L, -1) != 0 }
        mg_pop(L, 1)
        if Lua.rawField(L, table, "description") == LUA_TSTRING { field.description = Lua.string(L, -1) }
        mg_pop(L, 1)
        if Lua.rawField(L, table, "format") != LUA_TNIL {
            guard case .string = kind, let name = Lua.string(L, -1), let format = SchemaField.Format(rawValue: name) else {
                mg_pop(L, 1)
                throw bad("format must be one of: \(SchemaField.Format.allCases.map(\.rawValue).joined(separator: ", ")) (on a string field)")
            }
            field.format = format
        }
        mg_pop(L, 1)
        for bound in ["min", "max"] {
            let t = Lua.rawField(L, table, bound)
            if t == LUA_TNUMBER {
                let v = lua_tonumberx(L, -1, nil)
                if bound == "min" { field.min = v } else { field.max = v }
            } else if t != LUA_TNIL {
                mg_pop(L, 1)
                throw bad("\(bound) must be a number")
            }
            mg_pop(L, 1)
        }
        if Lua.rawField(L, table, "one_of") != LUA_TNIL {
            guard case .array(let values)? = try? LuaValue.json(L, -1) else {
                mg_pop(L, 1)
                throw bad("one_of must be a list of values")
            }
            field.oneOf = values
        }
        mg_pop(L, 1)
        if Lua.rawField(L, table, "default") != LUA_TNIL {
            let value: JSONValue
            do {
                value = try LuaValue.json(L, -1)
            } catch {
                mg_pop(L, 1)
                throw bad("default: \(error.message)")
            }
            var problems: [ConfigDiagnostic] = []
            var checked = field
            checked.oneOf = field.oneOf
            guard let filled = check(LocatedValue(json: value, path: "default"), checked, &problems) else {
                mg_pop(L, 1)
                throw bad("the default does not match the field: \(problems.map(\.description).joined(separator: "; "))")
            }
            field.defaultValue = filled
        }
        mg_pop(L, 1)
        return field
    }
}

/// Lua values read as JSON (raw access, bounded depth): schema defaults and enumerations.
enum LuaValue {
    static func json(_ L: OpaquePointer, _ index: Int32, depth: Int = 0) throws(ScriptError) -> JSONValue {
        let index = lua_absindex(L, index)
        guard depth < 16 else { throw ScriptError(file: nil, line: nil, message: "nested too deep") }
        switch lua_type(L, index) {
        case LUA_TNIL: return .null
        case LUA_TBOOLEAN: return .bool(lua_toboolean(L, index) != 0)
        case LUA_TNUMBER:
            if lua_isinteger(L, index) != 0 { return .int(Int(lua_tointegerx(L, index, nil))) }
            return .double(lua_tonumberx(L, index, nil))
        case LUA_TSTRING: return .string(Lua.string(L, index)!)
        case LUA_TTABLE:
            let count = Int(lua_rawlen(L, index))
            var items: [JSONValue] = []
            var members: [String: JSONValue] = [:]
            var keys = 0
            lua_pushnil(L)
            while lua_next(L, index) != 0 {
                keys += 1
                let value: JSONValue
                do {
                    value = try json(L, -1, depth: depth + 1)
                } catch {
                    lua_settop(L, index)
                    throw error
                }
                if let key = Lua.string(L, -2) { members[key] = value }
                mg_pop(L, 1)
            }
            if keys == 0 { return .array([]) }
            if count == keys {
                for i in 1...count {
                    lua_rawgeti(L, index, lua_Integer(i))
                    let v = try json(L, -1, depth: depth + 1)
                    mg_pop(L, 1)
                    items.append(v)
                }
                return .array(items)
            }
            guard members.count == keys else { throw ScriptError(file: nil, line: nil, message: "a table mixes list items and names") }
            return .object(members)
        default:
            throw ScriptError(file: nil, line: nil, message: "a \(Lua.typeName(L, index)) is not a configuration value")
        }
    }
}
