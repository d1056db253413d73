import CJOSE
import CLuaRuntime
import Config
import FoundationEssentials
import NIOConcurrencyHelpers
import HTTPClient
import NIOCore
import NIOHTTP1
import Scripting
import SocketLoop

/// `oauth2.introspect(token, server)`: asks an RFC 7662 introspection endpoint whether an
/// opaque token is active. Returns the endpoint's answer as a table (`active`, `sub`,
/// `scope`, `exp`, ...) for an active token, or `nil, reason`: `inactive`, `missing`,
/// `too_large`, `timeout`, `unavailable`, `bad_response`.
///
/// Answers are cached per worker: an active token's until its `exp` (at most `max_cache`),
/// an inactive one's for `negative_cache`. A miss waits for the endpoint without blocking
/// the event loop (the access phase suspends), for at most the endpoint's `timeout`.
public struct OAuth2Module: LuaModule {
    public let name = "oauth2"
    let context: IntrospectionContext

    public init(_ servers: [IntrospectionServer], transport: (any IntrospectionTransport)? = nil) throws(KeysetError) {
        context = try IntrospectionContext(servers, transport: transport)
    }

    static let registryKey = "moongate.oauth2"
    static let maxTokenBytes = 16 * 1024
    static let maxAnswerBytes = 64 * 1024

    public func register(_ L: OpaquePointer) {
        lua_pushlightuserdata(L, Unmanaged.passUnretained(context).toOpaque())
        lua_setfield(L, mg_registry_index(), Self.registryKey)
        Lua.setFunction(L, "introspect") { L in OAuth2Module.introspect(L!) }
    }

    /// The endpoint stand-in of `moongate test`, if this module was made with one.
    public var stub: StubIntrospection? { context.transport as? StubIntrospection }

    /// Forgets every cached answer (the harness, between tests).
    public func clearCaches() { context.clearCaches() }

    static func refuse(_ L: OpaquePointer, _ reason: String) -> Int32 {
        countFailure(L, "oauth2", reason)
        lua_pushnil(L)
        Lua.push(L, reason)
        return 2
    }

    static func introspect(_ L: OpaquePointer) -> Int32 {
        lua_getfield(L, mg_registry_index(), registryKey)
        let context = Unmanaged<IntrospectionContext>.fromOpaque(lua_touserdata(L, -1)!).takeUnretainedValue()
        mg_pop(L, 1)
        guard let name = Lua.string(L, 2) else { return Lua.raise(L, "oauth2.introspect(token, server): the server name must be a string") }
        guard let index = context.index[name] else { return Lua.raise(L, "oauth2.introspect: no introspection server \"\(name)\" in the config") }
        guard let token = Lua.bytes(L, 1), !token.isEmpty else { return refuse(L, "missing") }
        guard token.count <= maxTokenBytes else { return refuse(L, "too_large") }
        let server = context.servers[index]
        let key = Array(token)
        let now = Lua.now(L)
        if let cache = server.cache(), let payload = cache.lookup(key, now: now) {
            return push(L, payload: payload)
        }
        guard let host = Lua.host(L), host.scriptCanWait else {
            return Lua.raise(L, "oauth2.introspect: an answer that is not cached can only be awaited in the access phase")
        }
        let wait = Wait()
        context.transport.introspect(server: index, token: key) { result in
            guard let resumer = wait.resumer else {
                wait.result = result
                return
            }
            wait.resumer = nil
            resumer.resume { L in finish(L, server, key, result) }
        }
        if let result = wait.result { return finish(L, server, key, result) }
        wait.resumer = host.scriptSuspend()
        return Lua.yield(L)
    }

    final class Wait {
        var result: Result<HTTPFetch.Response, HTTPFetch.Failure>?
        var resumer: ScriptResumer?
    }

    /// Pushes the cached JSON answer, or the refusal an empty payload stands for.
    private static func push(_ L: OpaquePointer, payload: [UInt8]) -> Int32 {
        if payload.isEmpty { return refuse(L, "inactive") }
        let pushed = payload.withUnsafeBytes { mg_json_push(L, $0.baseAddress?.assumingMemoryBound(to: CChar.self), $0.count) }
        return pushed == 1 ? 1 : refuse(L, "bad_response")
    }

    /// The endpoint's answer: checked, cached, pushed.
    private static func finish(
        _ L: OpaquePointer, _ server: IntrospectionContext.Server, _ token: [UInt8], _ result: Result<HTTPFetch.Response, HTTPFetch.Failure>
    ) -> Int32 {
        let response: HTTPFetch.Response
        switch result {
        case .success(let r): response = r
        case .failure(let failure):
            switch failure.kind {
            case .timeout: return refuse(L, "timeout")
            case .connection: return refuse(L, "unavailable")
            case .tooLarge, .status: return refuse(L, "bad_response")
            }
        }
        guard response.status == 200, Lua.memoryLeft(L) > response.body.count * 4 else { return refuse(L, "bad_response") }
        let pushed = response.body.withUnsafeBytes { mg_json_push(L, $0.baseAddress?.assumingMemoryBound(to: CChar.self), $0.count) }
        guard pushed == 1, lua_type(L, -1) == LUA_TTABLE else { return refuse(L, "bad_response") }
        let answer = lua_gettop(L)
        let now = Lua.now(L)
        let active = Lua.rawField(L, answer, "active") == LUA_TBOOLEAN && lua_toboolean(L, -1) != 0
        var exp: Double?
        if Lua.rawField(L, answer, "exp") == LUA_TNUMBER { exp = lua_tonumberx(L, -1, nil) }
        lua_settop(L, answer)
        let cache = server.cache()
        guard active, exp.map({ $0 > now }) ?? true else {
            cache?.insert(token, payload: [], expires: now + server.negativeCache, now: now, limit: server.cacheEntries)
            return refuse(L, "inactive")
        }
        cache?.insert(token, payload: response.body, expires: min(exp ?? .infinity, now + server.maxCache), now: now, limit: server.cacheEntries)
        return 1
    }
}

/// How `oauth2.introspect` reaches its endpoints: over HTTP from the request's event loop
/// in the gateway, from answers a test set in `moongate test`.
public protocol IntrospectionTransport: Sendable {
    /// Asks server `server` (an index into the config's `introspection`) about `token`;
    /// `completion` runs on the calling event loop, possibly before this returns.
    func introspect(server: Int, token: [UInt8], completion: @escaping (Result<HTTPFetch.Response, HTTPFetch.Failure>) -> Void)
}

/// The endpoints, their cache shards and how to reach them.
final class IntrospectionContext: Sendable {
    final class Server: Sendable {
        let config: IntrospectionServer
        let cacheEntries: Int
        let maxCache: Double
        let negativeCache: Double
        /// One shard per worker thread, as the token cache of keysets.
        private let shards: [TokenCache]

        init(_ config: IntrospectionServer) {
            self.config = config
            cacheEntries = config.cacheEntries
            maxCache = Double(config.maxCache.components.seconds) + Double(config.maxCache.components.attoseconds) / 1e18
            negativeCache = Double(config.negativeCache.components.seconds) + Double(config.negativeCache.components.attoseconds) / 1e18
            shards = config.cacheEntries > 0 ? (0..<CompiledKeyset.cacheShards).map { _ in TokenCache() } : []
        }

        func cache() -> TokenCache? {
            let index = Int(mg_thread_index())
            return index < shards.count ? shards[index] : nil
        }

        func clear() { for s in shards { s.clear() } }
    }

    let servers: [Server]
    let index: [String: Int]
    let transport: any IntrospectionTransport

    init(_ configs: [IntrospectionServer], transport: (any IntrospectionTransport)?) throws(KeysetError) {
        servers = configs.map(Server.init)
        index = Dictionary(configs.enumerated().map { ($0.element.name, $0.offset) }, uniquingKeysWith: { a, _ in a })
        if let transport {
            self.transport = transport
        } else {
            self.transport = try HTTPIntrospection(configs)
        }
    }

    func clearCaches() { for s in servers { s.clear() } }
}

/// The gateway's transport: a form POST with HTTP Basic client credentials (RFC 6749 2.3.1),
/// one connection per cache miss, on the request's event loop.
final class HTTPIntrospection: IntrospectionTransport {
    private let servers: [IntrospectionServer]
    private let targets: [HTTPFetch.Target]
    /// `Basic base64(urlencode(id):urlencode(secret))` per server, made once.
    private let authorizations: [String]

    init(_ servers: [IntrospectionServer]) throws(KeysetError) {
        self.servers = servers
        var authorizations: [String] = []
        var targets: [HTTPFetch.Target] = []
        for server in servers {
            do {
                targets.append(try HTTPFetch.Target(server.endpoint))
            } catch {
                throw KeysetError(description: "introspection.\(server.name): TLS: \(error)")
            }
            var secret = server.clientSecret ?? ""
            if let file = server.clientSecretFile {
                guard let text = try? FileReading.text(file) else {
                    throw KeysetError(description: "introspection.\(server.name).client_secret_file: cannot read \(file)")
                }
                secret = String(text.trimmingWhitespace())
            }
            let credentials = Self.formEncode(Array(server.clientID.utf8)) + ":" + Self.formEncode(Array(secret.utf8))
            authorizations.append("Basic " + Data(credentials.utf8).base64EncodedString())
        }
        self.authorizations = authorizations
        self.targets = targets
    }

    func introspect(server: Int, token: [UInt8], completion: @escaping (Result<HTTPFetch.Response, HTTPFetch.Failure>) -> Void) {
        guard let loop = SocketLoop.currentEventLoop else {
            completion(.failure(HTTPFetch.Failure(.connection, "not on a gateway event loop")))
            return
        }
        let s = servers[server]
        let body = Array(("token=" + Self.formEncode(token) + "&token_type_hint=access_token").utf8)
        let timeout = TimeAmount.nanoseconds(Int64(s.timeout.components.seconds) * 1_000_000_000 + s.timeout.components.attoseconds / 1_000_000_000)
        HTTPFetch.send(
            .POST, targets[server],
            headers: [("Authorization", authorizations[server]), ("Content-Type", "application/x-www-form-urlencoded")], body: body,
            on: loop, timeout: timeout, maxBytes: OAuth2Module.maxAnswerBytes
        ).assumeIsolatedUnsafeUnchecked().whenComplete { result in
            completion(result.mapError { $0 as? HTTPFetch.Failure ?? HTTPFetch.Failure(.connection, "\($0)") })
        }
    }

    /// `application/x-www-form-urlencoded`: unreserved bytes as they are, the rest `%XX`.
    static func formEncode(_ bytes: some Sequence<UInt8>) -> String {
        let hex = Array("0123456789ABCDEF".utf8)
        var out: [UInt8] = []
        for b in bytes {
            switch b {
            case UInt8(ascii: "A")...UInt8(ascii: "Z"), UInt8(ascii: "a")...UInt8(ascii: "z"), UInt8(ascii: "0")...UInt8(ascii: "9"),
                UInt8(ascii: "-"), UInt8(ascii: "."), UInt8(ascii: "_"), UInt8(ascii: "~"):
                out.append(b)
            default:
                out += [UInt8(ascii: "%"), hex[Int(b >> 4)], hex[Int(b & 15)]]
            }
        }
        return String(decoding: out, as: UTF8.self)
    }
}

/// `moongate test`'s endpoints: the answers tests set with `harness.oauth2.answer(server,
/// token, table_or_nil)` (nil: inactive) or a failure with `harness.oauth2.fail(server,
/// reason)`; a token nobody set is inactive.
public final class StubIntrospection: IntrospectionTransport, @unchecked Sendable {
    private let lock = NIOLock()
    private var answers: [Int: [[UInt8]: [UInt8]]] = [:]
    private var failures: [Int: HTTPFetch.Failure] = [:]
    /// Calls that reached the stand-in (not the cache), for tests of caching.
    public private(set) var calls = 0

    public init() {}

    public func introspect(server: Int, token: [UInt8], completion: @escaping (Result<HTTPFetch.Response, HTTPFetch.Failure>) -> Void) {
        let result: Result<HTTPFetch.Response, HTTPFetch.Failure> = lock.withLock {
            calls += 1
            if let failure = failures[server] { return .failure(failure) }
            let body = answers[server]?[token] ?? Array(#"{"active":false}"#.utf8)
            return .success(HTTPFetch.Response(status: 200, body: body, cacheControl: nil))
        }
        completion(result)
    }

    func set(server: Int, token: [UInt8], answer: [UInt8]) { lock.withLock { answers[server, default: [:]][token] = answer } }
    func fail(server: Int, _ failure: HTTPFetch.Failure?) { lock.withLock { failures[server] = failure } }

    public func reset() {
        lock.withLock {
            answers = [:]
            failures = [:]
            calls = 0
        }
    }
}
