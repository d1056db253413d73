import CJOSE
import Config
import FoundationEssentials
import Glibc

/// A problem with a keyset's keys, found when the config loads.
public struct KeysetError: Error, CustomStringConvertible, Sendable {
    public var description: String
}

/// JWS algorithm names and what they need of a key.
enum Algorithm {
    static let byName: [String: mg_alg] = [
        "HS256": MG_ALG_HS256, "HS384": MG_ALG_HS384, "HS512": MG_ALG_HS512,
        "RS256": MG_ALG_RS256, "RS384": MG_ALG_RS384, "RS512": MG_ALG_RS512,
        "PS256": MG_ALG_PS256, "PS384": MG_ALG_PS384, "PS512": MG_ALG_PS512,
        "ES256": MG_ALG_ES256, "ES384": MG_ALG_ES384, "ES512": MG_ALG_ES512,
        "EdDSA": MG_ALG_EDDSA,
    ]

    static func isHMAC(_ alg: mg_alg) -> Bool { alg.rawValue <= MG_ALG_HS512.rawValue }

    /// Whether `key` may check `alg`: secrets only for HS*, RSA keys only for RS*/PS*, each
    /// curve only for its own ES*, Edwards keys only for EdDSA (no RS/HS confusion).
    static func fits(_ alg: mg_alg, _ key: CompiledKeyset.Key) -> Bool {
        if isHMAC(alg) { return key.secret != nil }
        guard key.secret == nil else { return false }
        switch alg {
        case MG_ALG_RS256, MG_ALG_RS384, MG_ALG_RS512, MG_ALG_PS256, MG_ALG_PS384, MG_ALG_PS512: return key.kind == MG_KEY_RSA
        case MG_ALG_ES256: return key.kind == MG_KEY_EC_P256
        case MG_ALG_ES384: return key.kind == MG_KEY_EC_P384
        case MG_ALG_ES512: return key.kind == MG_KEY_EC_P521
        case MG_ALG_EDDSA: return key.kind == MG_KEY_ED25519 || key.kind == MG_KEY_ED448
        default: return false
        }
    }
}

/// A keyset with its keys parsed, built once per config generation. OpenSSL 3 allows an
/// `EVP_PKEY` to be used for verification from several threads at once as long as nobody
/// changes it, and nothing does after this is built; so workers share it.
public final class CompiledKeyset: @unchecked Sendable {
    struct Key {
        var kid: String?
        var secret: [UInt8]?
        var pkey: OpaquePointer?
        var kind: mg_key_kind
    }

    public let name: String
    let algorithms: Set<UInt32>
    let keys: [Key]
    let issuer: String?
    let audience: [String]
    let leeway: Double
    let maxAge: Double?
    let requiredClaims: [String]
    let cacheEntries: Int
    /// Verified tokens, one shard per worker thread (see `cache()`).
    private let shards: [TokenCache]
    static let cacheShards = 64
    /// Keys from a JWKS URL, as each worker last received them (nil without a URL).
    public let remote: RemoteKeys?

    public init(_ keyset: Keyset) throws(KeysetError) {
        name = keyset.name
        algorithms = Set(keyset.algorithms.compactMap { Algorithm.byName[$0]?.rawValue })
        issuer = keyset.issuer
        audience = keyset.audience
        leeway = Self.seconds(keyset.leeway)
        maxAge = keyset.maxAge.map(Self.seconds)
        requiredClaims = keyset.requiredClaims
        cacheEntries = keyset.cacheEntries
        shards = keyset.cacheEntries > 0 ? (0..<Self.cacheShards).map { _ in TokenCache() } : []
        remote = keyset.jwksURL.map { RemoteKeys(url: $0, keyset: keyset.name) }
        var keys: [Key] = []
        for source in keyset.keys {
            let text: String
            if let value = source.value {
                text = value
            } else if let file = source.file {
                guard let data = FileManager.default.contents(atPath: file) else {
                    throw KeysetError(description: "keyset \(keyset.name): cannot read \(file)")
                }
                text = String(decoding: data, as: UTF8.self)
            } else {
                continue
            }
            switch source.kind {
            case .secret:
                // A trailing newline in a secret file is the editor's, not the secret's.
                let secret = source.file == nil ? text : String(text.trimmingSuffix { $0 == "\n" || $0 == "\r" })
                guard !secret.isEmpty else { throw KeysetError(description: "keyset \(keyset.name): an empty secret") }
                keys.append(Key(kid: source.kid, secret: Array(secret.utf8), pkey: nil, kind: MG_KEY_OTHER))
            case .pem:
                let pkey = text.withCString { mg_pem_public_key($0, strlen($0)) }
                guard let pkey else {
                    throw KeysetError(description: "keyset \(keyset.name): \(source.file ?? "a key") is not a PEM public key or certificate")
                }
                keys.append(Key(kid: source.kid, secret: nil, pkey: pkey, kind: mg_key_kind_of(pkey)))
            }
        }
        if let file = keyset.jwksFile {
            guard let data = FileManager.default.contents(atPath: file) else { throw KeysetError(description: "keyset \(keyset.name): cannot read \(file)") }
            keys += try JWKS.parse(data, keyset: keyset.name, source: file)
        }
        for alg in keyset.algorithms where keyset.jwksURL == nil {
            guard let a = Algorithm.byName[alg] else { continue }
            if !keys.contains(where: { Algorithm.fits(a, $0) }) {
                throw KeysetError(description: "keyset \(keyset.name): no key can check \(alg) tokens")
            }
        }
        self.keys = keys
    }

    deinit {
        for key in keys { mg_key_free(key.pkey) }
    }

    /// The calling thread's cache, or nil (caching off, or more threads than shards). Each
    /// shard is only ever touched by one thread, so no lock is needed; the shards live and
    /// die with this keyset, so a reload that changes the keys drops what they verified.
    func cache() -> TokenCache? {
        guard !shards.isEmpty else { return nil }
        let index = Int(mg_thread_index())
        return index < shards.count ? shards[index] : nil
    }

    /// Cache hits across threads, for tests.
    var cacheHits: Int { shards.reduce(0) { $0 + $1.hits } }

    static func seconds(_ d: Duration) -> Double {
        Double(d.components.seconds) + Double(d.components.attoseconds) / 1e18
    }
}

/// The keysets of a generation, by name.
public final class Keysets: Sendable {
    let byName: [String: CompiledKeyset]

    /// The keysets with a JWKS URL, for the fetcher.
    public var remotes: [RemoteKeys] { byName.values.compactMap(\.remote).sorted { $0.keyset < $1.keyset } }

    public init(_ keysets: [Keyset]) throws(KeysetError) {
        var byName: [String: CompiledKeyset] = [:]
        for keyset in keysets { byName[keyset.name] = try CompiledKeyset(keyset) }
        self.byName = byName
    }

    public subscript(name: String) -> CompiledKeyset? { byName[name] }
}

/// JSON Web Key Sets (RFC 7517): RSA, EC (P-256/384/521) and OKP (Ed25519/Ed448) public keys,
/// and `oct` secrets.
enum JWKS {
    static func parse(_ data: Data, keyset: String, source: String) throws(KeysetError) -> [CompiledKeyset.Key] {
        guard case .success(let document) = JSONValue.parse(data), case .array(let list)? = document["keys"],
            list.allSatisfy({ if case .object = $0 { true } else { false } })
        else {
            throw KeysetError(description: "keyset \(keyset): \(source) is not a JWKS (a JSON object with a keys list)")
        }
        var out: [CompiledKeyset.Key] = []
        for (i, jwk) in list.enumerated() {
            // Keys for encryption are not ours to use for signatures.
            if let use = jwk["use"]?.stringValue, use != "sig" { continue }
            let kid = jwk["kid"]?.stringValue
            func bytes(_ member: String) throws(KeysetError) -> [UInt8] {
                guard let text = jwk[member]?.stringValue, let decoded = Base64URL.decode(Array(text.utf8)) else {
                    throw KeysetError(description: "keyset \(keyset): \(source) keys[\(i)]: missing or bad \"\(member)\"")
                }
                return decoded
            }
            var pkey: OpaquePointer?
            switch jwk["kty"]?.stringValue {
            case "RSA":
                let n = try bytes("n"), e = try bytes("e")
                pkey = mg_jwk_rsa(n, n.count, e, e.count)
            case "EC":
                let curves: [String: mg_key_kind] = ["P-256": MG_KEY_EC_P256, "P-384": MG_KEY_EC_P384, "P-521": MG_KEY_EC_P521]
                guard let curve = jwk["crv"]?.stringValue.flatMap({ curves[$0] }) else {
                    throw KeysetError(description: "keyset \(keyset): \(source) keys[\(i)]: unsupported curve")
                }
                let x = try bytes("x"), y = try bytes("y")
                pkey = mg_jwk_ec(curve, x, x.count, y, y.count)
            case "OKP":
                let curves: [String: mg_key_kind] = ["Ed25519": MG_KEY_ED25519, "Ed448": MG_KEY_ED448]
                guard let curve = jwk["crv"]?.stringValue.flatMap({ curves[$0] }) else {
                    throw KeysetError(description: "keyset \(keyset): \(source) keys[\(i)]: unsupported curve")
                }
                let x = try bytes("x")
                pkey = mg_jwk_okp(curve, x, x.count)
            case "oct":
                out.append(CompiledKeyset.Key(kid: kid, secret: try bytes("k"), pkey: nil, kind: MG_KEY_OTHER))
                continue
            default:
                throw KeysetError(description: "keyset \(keyset): \(source) keys[\(i)]: unsupported key type")
            }
            guard let pkey else { throw KeysetError(description: "keyset \(keyset): \(source) keys[\(i)]: not a valid key") }
            out.append(CompiledKeyset.Key(kid: kid, secret: nil, pkey: pkey, kind: mg_key_kind_of(pkey)))
        }
        return out
    }
}

/// base64url without padding (RFC 7515 2).
public enum Base64URL {
    public static func decode(_ text: [UInt8]) -> [UInt8]? {
        var out = [UInt8](repeating: 0, count: text.count * 3 / 4 + 3)
        let n = text.withUnsafeBufferPointer { t in
            t.withMemoryRebound(to: CChar.self) { mg_b64url_decode($0.baseAddress, $0.count, &out) }
        }
        guard n >= 0 else { return nil }
        out.removeLast(out.count - n)
        return out
    }

    public static func encode(_ bytes: [UInt8]) -> String {
        var out = [CChar](repeating: 0, count: (bytes.count + 2) / 3 * 4 + 1)
        let n = mg_b64url_encode(bytes, bytes.count, &out)
        return String(decoding: out[0..<n].map { UInt8(bitPattern: $0) }, as: UTF8.self)
    }
}

extension String {
    fileprivate func trimmingSuffix(_ predicate: (Character) -> Bool) -> Substring {
        var end = endIndex
        while end > startIndex, predicate(self[index(before: end)]) { end = index(before: end) }
        return self[startIndex..<end]
    }
}

/// Verified tokens of one keyset on one thread: the token's payload JSON until its `exp`.
final class TokenCache: @unchecked Sendable {
    struct Entry {
        var payload: [UInt8]
        var expires: Double
    }

    private var entries: [[UInt8]: Entry] = [:]
    private(set) var hits = 0

    func lookup(_ token: [UInt8], now: Double) -> [UInt8]? {
        guard let entry = entries[token] else { return nil }
        guard now < entry.expires else {
            entries[token] = nil
            return nil
        }
        hits += 1
        return entry.payload
    }

    /// Keeps at most `limit` entries: when full, expired ones go first, then all.
    func insert(_ token: [UInt8], payload: [UInt8], expires: Double, now: Double, limit: Int) {
        if entries.count >= limit {
            entries = entries.filter { $0.value.expires > now }
            if entries.count >= limit { entries.removeAll(keepingCapacity: true) }
        }
        entries[token] = Entry(payload: payload, expires: expires)
    }

    /// Forgets everything (the harness, between tests).
    func clear() { entries.removeAll() }
}

/// Parsed keys that come and go together (one JWKS fetch); freed when no worker holds them.
public final class KeyList: @unchecked Sendable {
    let keys: [CompiledKeyset.Key]

    init(_ keys: [CompiledKeyset.Key]) { self.keys = keys }

    deinit {
        for key in keys { mg_key_free(key.pkey) }
    }

    /// Parses a JWKS document.
    public static func parse(jwks data: [UInt8], keyset: String, source: String) throws(KeysetError) -> KeyList {
        KeyList(try JWKS.parse(Data(data), keyset: keyset, source: source))
    }

    public var count: Int { keys.count }
}

/// A keyset's JWKS URL and the keys fetched from it. The gateway's control plane fetches
/// and publishes; each worker keeps its own reference (one slot per worker thread, written
/// only on that thread), so verification reads keys without a lock.
public final class RemoteKeys: @unchecked Sendable {
    public let url: JWKSURL
    public let keyset: String
    private let slots: [Slot]
    /// Set by a worker that met an unknown kid; taken by the fetcher.
    private let refetchFlag = UnsafeMutablePointer<Int32>.allocate(capacity: 1)

    final class Slot {
        var keys: KeyList?
    }

    init(url: JWKSURL, keyset: String) {
        self.url = url
        self.keyset = keyset
        slots = (0..<CompiledKeyset.cacheShards).map { _ in Slot() }
        refetchFlag.initialize(to: 0)
    }

    deinit { refetchFlag.deallocate() }

    /// The calling worker's keys.
    var current: KeyList? {
        let index = Int(mg_thread_index())
        return index < slots.count ? slots[index].keys : nil
    }

    /// Installs `keys` for the calling thread: call it on each worker's event loop.
    public func publish(_ keys: KeyList) {
        let index = Int(mg_thread_index())
        if index < slots.count { slots[index].keys = keys }
    }

    /// A worker met a kid it does not know: the fetcher should look again (rate-limited).
    func requestRefetch() { _ = mg_atomic_exchange(refetchFlag, 1) }

    /// Whether a refetch was asked for since the last call.
    public func takeRefetchRequest() -> Bool { mg_atomic_exchange(refetchFlag, 0) == 1 }
}
