/// A validated gateway configuration: what one YAML file says, with defaults filled in.
/// Immutable; a reload builds a new one and the runtime swaps it in whole.
public struct GatewayConfig: Sendable, Equatable {
    /// Event loops (one thread each) serving traffic; `nil` means one per core.
    public var workers: Int?
    /// `trace`, `debug`, `info`, `notice`, `warning`, `error` or `critical`. Default `info`.
    public var logLevel: String
    /// `log_format`: `json` (one object per line) or `text`; nil: JSON unless stderr is a terminal.
    public var logFormat: String? = nil
    public var listeners: [Listener]
    public var admin: SocketAddressSpec?
    /// `admin.token_file`: the admin API's bearer tokens (`id sha256-hex` lines); required
    /// off loopback. Resolved against the config file's folder by the loader.
    public var adminTokenFile: String?
    /// `store:` — where the dynamic part of the configuration lives.
    public var store = StoreConfig()
    public var limits: Limits
    public var timeouts: Timeouts
    /// Upstreams in file order; routes refer to them by index.
    public var upstreams: [Upstream]
    /// Routes in file order; the first that matches wins.
    public var routes: [Route]
    /// The Lua policy scripts: where they are, their pool and default budgets.
    public var scripts: ScriptsConfig
    /// Keys that `jwt.verify(token, name)` checks tokens against, by name.
    public var keysets: [Keyset] = []
    /// API key sets that `apikey.verify(key, name)` looks keys up in.
    public var apiKeys: [APIKeySet] = []
    /// Redis servers rate-limit buckets may be kept in, by name.
    public var redis: [RedisServer] = []
    /// The local bucket store and the default store.
    public var rateLimit = RateLimitConfig()
    /// OAuth2 token introspection endpoints (RFC 7662) `oauth2.introspect(token, name)` asks.
    public var introspection: [IntrospectionServer] = []
    public var metrics = MetricsConfig()
    public var accessLog = AccessLogConfig()
    public var tracing = TracingConfig()
    /// `plugins:` — the global chain and the folders of user plugins.
    public var plugins = PluginsConfig()
    /// `kv:` — where `kv` keeps keys.
    public var kv = KVConfig()

    public init(
        workers: Int? = nil, logLevel: String = "info", listeners: [Listener], admin: SocketAddressSpec? = nil,
        limits: Limits = Limits(), timeouts: Timeouts = Timeouts(), upstreams: [Upstream], routes: [Route],
        scripts: ScriptsConfig = ScriptsConfig(), keysets: [Keyset] = [], apiKeys: [APIKeySet] = [],
        redis: [RedisServer] = [], rateLimit: RateLimitConfig = RateLimitConfig(), introspection: [IntrospectionServer] = []
    ) {
        self.introspection = introspection
        self.redis = redis
        self.rateLimit = rateLimit
        self.scripts = scripts
        self.keysets = keysets
        self.apiKeys = apiKeys
        self.workers = workers
        self.logLevel = logLevel
        self.listeners = listeners
        self.admin = admin
        self.limits = limits
        self.timeouts = timeouts
        self.upstreams = upstreams
        self.routes = routes
    }

    public func upstreamIndex(named name: String) -> Int? {
        upstreams.firstIndex { $0.name == name }
    }
}

/// `host:port`; the host may be an IPv4 or bracketed IPv6 literal or a name; empty means all.
public struct SocketAddressSpec: Sendable, Hashable, CustomStringConvertible {
    public var host: String
    public var port: Int

    public init(host: String, port: Int) {
        self.host = host
        self.port = port
    }

    /// Parses `host:port`, `[v6]:port` or `:port`.
    public init?(parsing text: String) {
        let t = String(text.trimmingSpaces())
        let hostPart: Substring
        let portPart: Substring
        if t.hasPrefix("[") {
            guard let close = t.firstIndex(of: "]"), t[t.index(after: close)...].hasPrefix(":") else { return nil }
            hostPart = t[t.index(after: t.startIndex)..<close]
            portPart = t[t.index(close, offsetBy: 2)...]
        } else {
            guard let colon = t.lastIndex(of: ":") else { return nil }
            hostPart = t[..<colon]
            portPart = t[t.index(after: colon)...]
            if hostPart.contains(":") { return nil }
        }
        guard let port = Int(portPart), (0...65535).contains(port) else { return nil }
        self.host = hostPart.isEmpty ? "0.0.0.0" : String(hostPart)
        self.port = port
    }

    public var description: String { host.contains(":") ? "[\(host)]:\(port)" : "\(host):\(port)" }
}

/// An address the gateway accepts client connections on.
public struct Listener: Sendable, Hashable {
    /// Unique name, for logs; defaults to the address.
    public var name: String
    public var address: SocketAddressSpec
    /// A router module (`router.lua`) whose `route(ctx)` picks the route for each request
    /// on this listener by name; when it returns nil, the routes' `match` decide.
    public var router: String?
    /// `tls:` — the listener terminates TLS with these certificates.
    public var tls: ListenerTLS?
    /// `h2c: true` — a cleartext listener also serves HTTP/2 to clients that start with its
    /// connection preface (prior knowledge, RFC 9113 3.3); HTTP/1.1 is still served there.
    public var h2c: Bool
    /// `http2:` — a TLS listener offers `h2` through ALPN (the default), else HTTP/1.1 only.
    public var http2: Bool

    public init(name: String, address: SocketAddressSpec, router: String? = nil, tls: ListenerTLS? = nil, h2c: Bool = false, http2: Bool = true) {
        self.name = name
        self.address = address
        self.router = router
        self.tls = tls
        self.h2c = h2c
        self.http2 = http2
    }

    /// Whether a connection to this listener may speak HTTP/2.
    public var servesHTTP2: Bool { tls != nil ? http2 : h2c }
}

/// A listener's TLS: certificates chosen by SNI, the lowest version offered.
public struct ListenerTLS: Sendable, Hashable {
    /// One certificate chain and its key (PEM files, resolved against the config's folder),
    /// with where the entry is written, for problems with the files.
    public struct Certificate: Sendable, Hashable {
        public var cert: String
        public var key: String
        public var place: LocatedValue
        public init(cert: String, key: String, place: LocatedValue = LocatedValue(.null)) {
            self.cert = cert
            self.key = key
            self.place = place
        }
    }

    public var certificates: [Certificate]
    /// 12 (TLS 1.2, the default) or 13.
    public var minVersion: Int = 12
    /// A connection whose handshake has not finished by then is closed.
    public var handshakeTimeout: Duration = .seconds(10)
    /// `client_ca`: PEM CAs that client certificates must chain to (mTLS); nil: none asked.
    public var clientCA: String?
    /// `client_auth: required` (the default with a `client_ca`) refuses a handshake without a
    /// client certificate; `optional` lets it go on without one.
    public var clientAuthRequired = true
    /// Where `tls:` is written, for problems with its files.
    public var place = LocatedValue(.null)
    /// Handshakes in progress per worker; a connection past it is closed at once (handshakes
    /// cost the CPU: a flood of them must not starve the requests of finished ones).
    public var maxHandshakes: Int = 256
    /// `session_tickets`: sessions resume from tickets sealed with keys rotated hourly (the
    /// default), else from the server's session cache only (TLS 1.2) or not across reloads.
    public var sessionTickets = true

    public init(certificates: [Certificate], minVersion: Int = 12) {
        self.certificates = certificates
        self.minVersion = minVersion
    }
}

/// TLS to an upstream's targets: the certificate verified (on by default) against `ca_file`
/// or the system's roots, for `sni` or the target's host; optionally a client certificate.
public struct UpstreamTLS: Sendable, Hashable {
    /// The name sent (SNI) and the certificate must be for; nil: the target's host (an IP
    /// address is verified as one, and no SNI is sent).
    public var sni: String?
    /// PEM CAs the upstream's certificate must chain to; nil: the system's roots.
    public var caFile: String?
    /// A client certificate and key (PEM) the gateway shows, for upstreams that ask (mTLS).
    public var cert: String?
    public var key: String?
    /// `verify: false` accepts any certificate (logged as a warning at load): tests only.
    public var verify = true
    /// 12 (TLS 1.2, the default) or 13.
    public var minVersion = 12
    /// Where `tls:` is written, for problems with its files.
    public var place = LocatedValue(.null)

    public init() {}
}

/// Limits on what a client may send. Each has its own status when exceeded.
public struct Limits: Sendable, Equatable {
    /// Bytes of the request head (request line and header fields). Default 16 KiB; `431`.
    public var maxHeaderBytes: Int = 16 * 1024
    /// Header fields in the request head. Default 100; `431`.
    public var maxHeaderCount: Int = 100
    /// Bytes of the request target. Default 8 KiB; `414`.
    public var maxURIBytes: Int = 8 * 1024
    /// Request body bytes, unless a route says otherwise. Default 10 MiB; `413`. 0 = unlimited.
    public var maxBodyBytes: Int = 10 * 1024 * 1024
    /// Client connections one worker holds at most; past it, accepting pauses until one
    /// closes (as when descriptors run out). Default 16384.
    public var maxConnections: Int = 16384
    /// HTTP/2 streams one client connection may have open at once (its
    /// `SETTINGS_MAX_CONCURRENT_STREAMS`). Default 100; a stream past it is refused.
    public var maxConcurrentStreams: Int = 100

    public init() {}
}

/// Time limits that are not per upstream.
public struct Timeouts: Sendable, Equatable {
    /// A client connection with no request in progress is closed after this. Default 60 s.
    public var clientIdle: Duration = .seconds(60)
    /// Longest a request may take from its first byte to its response's last. Default 60 s.
    public var request: Duration = .seconds(60)
    /// On shutdown or listener removal, how long in-flight requests may take to finish. Default 10 s.
    public var drain: Duration = .seconds(10)
    /// A tunnel (WebSocket) with no byte either way for this long is closed. Default 5 min.
    public var tunnelIdle: Duration = .seconds(300)

    public init() {}
}

/// A named group of origin servers.
public struct Upstream: Sendable, Equatable {
    public var name: String
    public var targets: [Target]
    /// TCP connect timeout. Default 2 s; a timeout answers `504`, a refusal `502`.
    public var connectTimeout: Duration = .seconds(2)
    /// Longest wait for the next byte of the upstream's response. Default 30 s; `504`.
    public var readTimeout: Duration = .seconds(30)
    /// Idle kept-alive connections per target per worker. Default 64.
    public var maxIdleConnections: Int = 64
    /// Connections per target per worker at most (0: no limit, the default). A request that
    /// finds them all busy waits in a queue of at most `queue` (default 256) for up to
    /// `queueTimeout` (default 1 s); past either, `503`.
    public var maxConnections = 0
    public var queue = 256
    public var queueTimeout: Duration = .seconds(1)
    /// Pooled connections unused this long are closed. Default 60 s.
    public var idleTimeout: Duration = .seconds(60)
    /// How a request's target is chosen. Default weighted round robin.
    public var balancer: Balancer = .roundRobin
    /// Further tries on another target after a try fails before any answer came (refused,
    /// reset, timed out): only for idempotent requests unless the route allows it. Default 2.
    public var retries = 2
    /// Longest wait for a try's response head before it counts as failed (and is retried).
    /// Default: `read_timeout`.
    public var tryTimeout: Duration?
    /// Retries allowed beyond `retryBudgetMin` per 10 s, as a share of the requests: so
    /// retries cannot multiply an outage's load. Default 0.2.
    public var retryBudget: Double = 0.2
    public var retryBudgetMin = 3
    /// Passive health: a target that fails this many tries in a row is ejected for
    /// `ejectTime`, twice as long each time it fails again after coming back, up to
    /// `maxEjectTime`. Defaults 3, 1 s, 30 s.
    public var ejectAfter = 3
    public var ejectTime: Duration = .seconds(1)
    public var maxEjectTime: Duration = .seconds(30)
    /// The circuit breaker each worker keeps per target.
    public var breaker = Breaker()
    /// Active health checks: probes each target; nil (the default) probes nothing.
    public var healthCheck: HealthCheck?
    /// `tls:`: connections to the targets speak TLS; nil (the default): plaintext.
    public var tls: UpstreamTLS?
    /// `protocol:` what the targets speak: `http1` (the default) or `h2`, HTTP/2 (with prior
    /// knowledge in clear, with ALPN `h2` over `tls:`), its streams multiplexed on pooled
    /// connections: what gRPC services need.
    public var h2 = false

    public struct HealthCheck: Sendable, Equatable {
        /// Requested with GET on each target.
        public var path = "/"
        public var interval: Duration = .seconds(5)
        public var timeout: Duration = .seconds(1)
        /// Statuses that count as healthy (default 200-399).
        public var expect: ClosedRange<Int> = 200...399
        /// Probes in a row that mark a target healthy again, or unhealthy. Defaults 2 and 2.
        public var healthy = 2
        public var unhealthy = 2

        public init() {}
    }

    public struct Breaker: Sendable, Equatable {
        /// Failed answers (5xx, or no answer) in a row that open it. Default 5.
        public var failures = 5
        /// ... or this share of failed answers in the window, once it has `minRequests`. Defaults 0.5, 20, 10 s.
        public var ratio = 0.5
        public var minRequests = 20
        public var window: Duration = .seconds(10)
        /// Open this long, then half-open. Default 5 s.
        public var openTime: Duration = .seconds(5)
        /// Requests let through half-open; all must succeed to close it. Default 1.
        public var probes = 1

        public init() {}
    }

    public enum Balancer: Sendable, Equatable {
        /// Smooth weighted round robin.
        case roundRobin
        /// The less loaded of two random targets (power of two choices), by requests in flight per weight.
        case leastRequest
        /// Consistent hashing on a key: the same key goes to the same target, and adding or
        /// removing a target moves about 1/N of the keys.
        case hash(HashKey)
    }

    public enum HashKey: Sendable, Equatable {
        case header(String)
        case cookie(String)
        case clientIP
    }

    public init(name: String, targets: [Target]) {
        self.name = name
        self.targets = targets
    }

    public struct Target: Sendable, Hashable {
        public var address: SocketAddressSpec
        /// Share of requests relative to the other targets. Default 1.
        public var weight: Int

        public init(address: SocketAddressSpec, weight: Int = 1) {
            self.address = address
            self.weight = weight
        }
    }
}

/// Which requests a route takes and where it sends them.
public struct Route: Sendable, Equatable {
    public var name: String
    /// Exact `Host` (port ignored, case-insensitive); `nil` matches any host.
    public var host: String?
    public var path: PathMatch
    /// Allowed methods; empty allows all.
    public var methods: [String]
    /// Index into `GatewayConfig.upstreams`.
    public var upstream: Int
    /// Remove the matched path prefix before proxying (`/api/users` → `/users`).
    public var stripPrefix: Bool = false
    public var hostHeader: HostHeader = .passthrough
    /// Overrides `limits.max_body_bytes` for this route.
    public var maxBodyBytes: Int?
    /// The policy module this route runs (`auth` for `auth.lua` in the scripts directory).
    public var policy: String?
    /// This route's script budgets: `scripts.budget` with the route's overrides applied.
    public var budget: ScriptBudget = ScriptBudget()
    /// Retry requests that are not idempotent (POST, PATCH) too. Default false.
    public var retryNonIdempotent = false
    /// What `redis_bucket.take` does on this route when Redis cannot answer. Default open.
    public var rateLimitFailure: RateLimitFailure = .open
    /// The route's own plugins (after the global ones, before its `policy`).
    public var plugins: [PluginUse] = []
    /// `upgrade`: the protocols (lower case, `websocket`) a request may switch to through this
    /// route; the connection is then a tunnel. Empty (the default): `Upgrade` is dropped.
    public var upgrade: [String] = []

    public init(name: String, host: String? = nil, path: PathMatch, methods: [String] = [], upstream: Int) {
        self.name = name
        self.host = host
        self.path = path
        self.methods = methods
        self.upstream = upstream
    }

    public enum PathMatch: Sendable, Equatable {
        case prefix(String)
        case exact(String)
    }

    /// What `Host` the upstream sees.
    public enum HostHeader: Sendable, Equatable {
        /// The client's `Host`, unchanged (the default, as nginx's `$host` or Envoy's default).
        case passthrough
        /// The chosen target's `host:port`.
        case target
        /// A fixed value.
        case fixed(String)
    }
}

/// Where the policy scripts live and how each worker runs them.
public struct ScriptsConfig: Sendable, Equatable {
    /// The scripts directory. Relative paths are resolved against the config file's folder by
    /// `ConfigLoader.load`. Default `policies`.
    public var directory: String = "policies"
    /// Requests per worker that may hold a Lua context (a thread of the worker's interpreter)
    /// at once: running a phase, or waiting in one (Redis, a body, `upstream.call`). With the
    /// memory budget, it bounds what waiting scripts may hold. Default 64.
    public var maxStates: Int = 64
    /// How long a request waits for a free context before `503`. Default 100 ms.
    public var poolWait: Duration = .milliseconds(100)
    /// Budgets for routes that set none of their own.
    public var budget = ScriptBudget()
    /// The scripts' sources by relative path when they come from the config store rather than
    /// `directory` (set by `ConfigLoader.load(path:document:)`).
    public var sources: [String: String]?

    public init() {}
}

/// What one request's script may use. Exceeding any of these ends the request with `500`,
/// logs the script, line and budget, and retires the interpreter (new requests get a fresh one).
public struct ScriptBudget: Sendable, Equatable {
    /// Lua instructions plus work charged by library functions (pattern matching, bulk table
    /// functions, json), per phase. Default 1,000,000 (a few milliseconds).
    public var instructions: Int = 1_000_000
    /// Wall-clock time the script may run per phase, not counting waits. Default 50 ms.
    public var time: Duration = .milliseconds(50)
    /// Heap growth per request, garbage included. Default 4 MiB.
    public var memory: Int = 4 * 1024 * 1024
    /// Lua call depth. Default 200.
    public var depth: Int = 200
    /// Coroutines created per request. Default 16.
    public var coroutines: Int = 16

    public init() {}
}

/// Keys for verifying JWTs, with the algorithms they may be used with and default claim checks.
public struct Keyset: Sendable, Equatable {
    public var name: String
    /// Allowed `alg` values (`none` is never allowed).
    public var algorithms: [String]
    public var keys: [KeySource]
    /// A JWKS document on disk.
    public var jwksFile: String?
    /// A JWKS document served over HTTP, fetched in the background (never on a request).
    public var jwksURL: JWKSURL?
    /// Required `iss`, if set.
    public var issuer: String?
    /// Accepted `aud` values; the token's (string or list) must name one. Empty: not checked.
    public var audience: [String] = []
    /// Slack for `exp`, `nbf` and `iat` against the clock. Default 0.
    public var leeway: Duration = .zero
    /// Tokens issued (`iat`) longer ago are refused, if set.
    public var maxAge: Duration?
    /// Claims that must be present.
    public var requiredClaims: [String] = []
    /// Verified tokens kept per worker, until their `exp`, so that a repeated token skips the
    /// signature check. 0 (the default) keeps none.
    public var cacheEntries = 0

    public init(name: String, algorithms: [String], keys: [KeySource]) {
        self.name = name
        self.algorithms = algorithms
        self.keys = keys
    }
}

/// One key of a keyset: an HMAC secret or a PEM public key, inline or in a file.
public struct KeySource: Sendable, Equatable {
    public enum Kind: Sendable, Equatable {
        case secret
        case pem
    }

    public var kid: String?
    public var kind: Kind
    /// The secret or PEM itself (from the file, if `file` was given; never logged).
    public var value: String?
    public var file: String?

    public init(kid: String?, kind: Kind, value: String?, file: String?) {
        self.kid = kid
        self.kind = kind
        self.value = value
        self.file = file
    }
}

/// API keys, stored as their SHA-256 digests with who they belong to.
public struct APIKeySet: Sendable, Equatable {
    public struct Entry: Sendable, Equatable {
        /// SHA-256 of the key, 32 bytes.
        public var digest: [UInt8]
        public var consumer: String
        public var scopes: [String]

        public init(digest: [UInt8], consumer: String, scopes: [String]) {
            self.digest = digest
            self.consumer = consumer
            self.scopes = scopes
        }
    }

    public var name: String
    public var keys: [Entry]
    /// A file of more entries, a line each: `sha256-hex consumer [scope,scope...]`.
    public var file: String?

    public init(name: String, keys: [Entry], file: String? = nil) {
        self.name = name
        self.keys = keys
        self.file = file
    }

    /// 64 hex digits → 32 bytes.
    public static func digest(hex: String) -> [UInt8]? {
        let chars = Array(hex.lowercased().utf8)
        guard chars.count == 64 else { return nil }
        var out: [UInt8] = []
        for i in stride(from: 0, to: 64, by: 2) {
            guard let hi = nibble(chars[i]), let lo = nibble(chars[i + 1]) else { return nil }
            out.append(hi << 4 | lo)
        }
        return out
    }

    private static func nibble(_ c: UInt8) -> UInt8? {
        switch c {
        case 48...57: return c - 48
        case 97...102: return c - 87
        default: return nil
        }
    }
}

/// Where a keyset's JWKS is fetched from, and how often.
public struct JWKSURL: Sendable, Equatable {
    public var endpoint: HTTPEndpoint
    /// Refetched after this, unless the answer's `Cache-Control: max-age` says otherwise.
    public var refresh: Duration = .seconds(300)
    /// A token naming an unknown kid asks for a refetch, at most this often.
    public var minRefetch: Duration = .seconds(30)

    public init(_ endpoint: HTTPEndpoint) {
        self.endpoint = endpoint
    }

    /// `http[s]://host[:port]/path`; nil otherwise.
    public init?(parsing text: String) {
        guard let e = HTTPEndpoint(parsing: text) else { return nil }
        self.init(e)
    }
}

/// Where an HTTP service the gateway calls is: `http[s]://host[:port]/path`.
public struct HTTPEndpoint: Sendable, Equatable, CustomStringConvertible {
    public var host: String
    public var port: Int
    public var path: String
    /// https: TLS, with the server's certificate checked against `caFile` or the system's
    /// trusted roots, and its name against `host`.
    public var tls: Bool
    /// PEM certificates to trust instead of the system's (a private CA).
    public var caFile: String?
    /// The TLS settings of an upstream this endpoint belongs to (its health check): the name
    /// sent and verified, a client certificate, verification off. Nil: the endpoint's host.
    public var upstreamTLS: UpstreamTLS?

    public init(host: String, port: Int, path: String, tls: Bool = false) {
        self.host = host
        self.port = port
        self.path = path
        self.tls = tls
    }

    /// `http[s]://host[:port]/path`; nil otherwise.
    public init?(parsing text: String) {
        let tls: Bool
        let rest: Substring
        if text.hasPrefix("http://") {
            tls = false
            rest = text.dropFirst(7)
        } else if text.hasPrefix("https://") {
            tls = true
            rest = text.dropFirst(8)
        } else {
            return nil
        }
        let slash = rest.firstIndex(of: "/") ?? rest.endIndex
        let authority = rest[..<slash]
        let path = rest[slash...].isEmpty ? "/" : String(rest[slash...])
        guard !authority.isEmpty, !authority.contains("@") else { return nil }
        if let colon = authority.lastIndex(of: ":"), let port = Int(authority[authority.index(after: colon)...]), (1...65535).contains(port) {
            self.init(host: String(authority[..<colon]), port: port, path: path, tls: tls)
        } else {
            guard !authority.contains(":") else { return nil }
            self.init(host: String(authority), port: tls ? 443 : 80, path: path, tls: tls)
        }
    }

    public var description: String { "\(tls ? "https" : "http")://\(host):\(port)\(path)" }
}
