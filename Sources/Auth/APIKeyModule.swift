import CJOSE
import CLuaRuntime
import Config
import FoundationEssentials
import Scripting

/// An API key set ready for lookups: digests and who they belong to.
public final class CompiledAPIKeys: Sendable {
    let entries: [APIKeySet.Entry]

    public init(_ set: APIKeySet) throws(KeysetError) {
        var entries = set.keys
        if let file = set.file {
            guard let data = FileManager.default.contents(atPath: file) else { throw KeysetError(description: "apikeys \(set.name): cannot read \(file)") }
            for (i, line) in String(decoding: data, as: UTF8.self).split(separator: "\n", omittingEmptySubsequences: false).enumerated() {
                let fields = line.split(separator: " ", omittingEmptySubsequences: true)
                if fields.isEmpty || fields[0].hasPrefix("#") { continue }
                guard fields.count >= 2, fields.count <= 3, let digest = APIKeySet.digest(hex: String(fields[0])) else {
                    throw KeysetError(description: "\(file):\(i + 1): expected \"sha256-hex consumer [scope,scope...]\"")
                }
                let scopes = fields.count == 3 ? fields[2].split(separator: ",").map(String.init) : []
                entries.append(APIKeySet.Entry(digest: digest, consumer: String(fields[1]), scopes: scopes))
            }
        }
        self.entries = entries
    }

    static func sha256(_ bytes: [UInt8], _ out: inout [UInt8]) {
        mg_sha256(bytes, bytes.count, &out)
    }

    /// The entry whose digest is the key's, comparing with every entry in constant time
    /// (no early exit, so the time says nothing about which or how many digests match).
    func lookup(_ key: UnsafeRawBufferPointer) -> APIKeySet.Entry? {
        withUnsafeTemporaryAllocation(of: UInt8.self, capacity: 32) { digest in
            mg_sha256(key.baseAddress?.assumingMemoryBound(to: UInt8.self), key.count, digest.baseAddress)
            var found = -1
            for i in entries.indices where mg_digest_equal(entries[i].digest, digest.baseAddress) == 1 { found = i }
            return found >= 0 ? entries[found] : nil
        }
    }
}

/// `apikey.verify(key, set)`: `{consumer=, scopes={...}}`, or `nil, reason` (`missing`,
/// `unknown`). Keys are stored only as SHA-256 digests.
public struct APIKeyModule: LuaModule {
    public let name = "apikey"
    let box: Box

    public init(_ sets: [APIKeySet]) throws(KeysetError) {
        var compiled: [String: CompiledAPIKeys] = [:]
        for set in sets { compiled[set.name] = try CompiledAPIKeys(set) }
        box = Box(compiled)
    }

    final class Box: Sendable {
        /// Few sets: a scan by the name's bytes, with no string made per call.
        let sets: [(name: [UInt8], keys: CompiledAPIKeys)]
        init(_ sets: [String: CompiledAPIKeys]) { self.sets = sets.map { (Array($0.key.utf8), $0.value) } }

        func set(named name: UnsafeRawBufferPointer) -> CompiledAPIKeys? {
            sets.first { $0.name.elementsEqual(name) }?.keys
        }
    }

    public func register(_ L: OpaquePointer) {
        // The program that holds this module outlives its states: an unretained pointer is safe.
        Lua.setFunction(L, "verify", context: box) { L in APIKeyModule.verify(L!) }
    }

    static func verify(_ L: OpaquePointer) -> Int32 {
        guard let name = Lua.bytes(L, 2) else { return Lua.raise(L, "apikey.verify(key, set): the set name must be a string") }
        guard let set = Lua.functionContext(L, as: Box.self).set(named: name) else {
            return Lua.raise(L, "apikey.verify: no apikeys set \"\(String(decoding: name.prefix(64), as: UTF8.self))\" in the config")
        }
        guard let key = Lua.bytes(L, 1), key.count > 0, key.count <= 4096 else {
            countFailure(L, "apikey", "missing")
            lua_pushnil(L)
            Lua.push(L, "missing")
            return 2
        }
        guard let entry = set.lookup(key) else {
            countFailure(L, "apikey", "unknown")
            lua_pushnil(L)
            Lua.push(L, "unknown")
            return 2
        }
        lua_createtable(L, 0, 2)
        Lua.push(L, entry.consumer)
        lua_setfield(L, -2, "consumer")
        Lua.push(L, strings: entry.scopes)
        lua_setfield(L, -2, "scopes")
        return 1
    }
}
