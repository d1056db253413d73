// swift-tools-version:6.0
import PackageDescription

let package = Package(
    name: "moongate",
    platforms: [.macOS(.v14)],
    products: [
        .executable(name: "moongate", targets: ["moongate"]),
        .executable(name: "moongate-bench-tls", targets: ["BenchTLS"]),
    ],
    dependencies: [
        .package(url: "https://github.com/apple/swift-nio.git", from: "2.101.3"),
        .package(url: "https://github.com/apple/swift-nio-ssl.git", from: "2.37.6"),
        .package(url: "https://github.com/apple/swift-nio-http2.git", from: "1.46.0"),
        .package(url: "https://github.com/apple/swift-argument-parser.git", from: "1.8.2"),
        .package(url: "https://github.com/apple/swift-log.git", from: "1.16.2"),
        .package(url: "https://github.com/swift-server/swift-service-lifecycle.git", from: "2.13.0"),
        .package(url: "https://github.com/apple/swift-metrics.git", from: "2.13.0"),
        .package(url: "https://github.com/swift-server/swift-prometheus.git", from: "2.4.1"),
        .package(url: "https://github.com/adam-fowler/compress-nio.git", from: "1.5.0"),
    ],
    targets: [
        // C libraries from Debian, found through pkg-config.
        .systemLibrary(
            name: "CLua", pkgConfig: "lua5.4",
            providers: [.apt(["liblua5.4-dev"])]),
        // Debian's hiredis.pc carries -D_FILE_OFFSET_BITS=64 in its Cflags, which SwiftPM refuses
        // with "warning: prohibited flag(s)" on every build; harmless (the headers need no such
        // define), and scripts/ filter that one line from their output.
        .systemLibrary(
            name: "CHiredis", pkgConfig: "hiredis",
            providers: [.apt(["libhiredis-dev"])]),
        .systemLibrary(
            name: "COpenSSL", pkgConfig: "openssl",
            providers: [.apt(["libssl-dev"])]),
        .systemLibrary(
            name: "CYAML", pkgConfig: "yaml-0.1",
            providers: [.apt(["libyaml-dev"])]),
        // YAML documents composed into trees with lines, on libyaml's parser.
        .target(name: "YAML", dependencies: ["CYAML"]),

        // Our C glue for Lua: the budgeted allocator, count hook, trampoline for Swift functions,
        // the guarded standard libraries, our own budgeted Lua pattern matcher, and the json
        // module. C because Lua's errors longjmp, which must never cross a Swift frame.
        .target(
            name: "CLuaRuntime",
            dependencies: ["CLua"]),

        // JOSE signatures on OpenSSL's EVP interfaces (verify, test signing, keys from PEM and JWK).
        .target(
            name: "CJOSE",
            dependencies: ["COpenSSL"]),
        // TLS contexts on OpenSSL (versions, suites, certificates, SNI), in C for its macros.
        .target(
            name: "CTLS",
            dependencies: ["COpenSSL"]),
        // TLS for the gateway's listeners and upstreams: certificates chosen by SNI.
        .target(
            name: "TLS",
            dependencies: ["CTLS", "COpenSSL", "SocketLoop", .product(name: "NIOCore", package: "swift-nio")]),
        // The local rate-limit table: token buckets shared by every event loop, updated with a
        // 128-bit compare-and-swap (C: Swift has no double-word atomics on Linux).
        .target(name: "CBuckets"),
        // epoll, eventfd and accept4, which Glibc's overlay leaves out (header only).
        .systemLibrary(name: "CEpoll"),
        // The data plane's event loop: one epoll thread per core, plain sockets read and
        // written with read/writev, NIO's EventLoop contract (futures, scheduled tasks).
        .target(
            name: "SocketLoop",
            dependencies: [
                "CEpoll",
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "NIOPosix", package: "swift-nio"),
                .product(name: "NIOConcurrencyHelpers", package: "swift-nio"),
            ],
            // Loop-confined final classes, like Proxy's handlers: without this the runtime's
            // exclusivity checks were a third of the loop's own instructions per request
            // (callgrind: 38 swift_beginAccess a proxied request from the socket code alone).
            swiftSettings: [.unsafeFlags(["-enforce-exclusivity=unchecked"])]),
        // A Redis client for the event loops: hiredis's protocol code over a SwiftNIO connection
        // per loop, pipelined, with timeouts, reconnects and a circuit breaker; TLS; Redis
        // Cluster (slot map, MOVED/ASK) and Sentinel on top.
        .target(
            name: "Redis",
            dependencies: [
                "Config", "CHiredis", "SocketLoop", "TLS",
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "NIOPosix", package: "swift-nio"),
                .product(name: "Logging", package: "swift-log"),
            ]),
        // `redis_bucket`: token buckets in the local store or in Redis (an atomic Lua script),
        // the failure modes, and the harness's stand-ins.
        .target(
            name: "RateLimit",
            dependencies: [
                "Config", "Scripting", "CLuaRuntime", "CBuckets", "Redis", "COpenSSL", "Telemetry", "SocketLoop",
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "NIOPosix", package: "swift-nio"),
                .product(name: "Logging", package: "swift-log"),
            ],
            swiftSettings: [
                // take runs per request; no shared mutable state outside the C table and atomics.
                .unsafeFlags(["-enforce-exclusivity=unchecked"])
            ]),
        // A small HTTP/1.1 client on NIO (one connection per request, http or https): JWKS
        // fetches, token introspection, and scripts' sub-requests (`upstream.call`).
        .target(
            name: "HTTPClient",
            dependencies: [
                "Config", "SocketLoop", "TLS",
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "NIOPosix", package: "swift-nio"),
                .product(name: "NIOHTTP1", package: "swift-nio"),
            ]),
        // Metric values per event loop (no locks when recording), summed at scrape time into
        // the Prometheus text format; the families scripts declare through `metrics`.
        .target(
            name: "Telemetry",
            dependencies: [.product(name: "NIOConcurrencyHelpers", package: "swift-nio")],
            swiftSettings: [.unsafeFlags(["-enforce-exclusivity=unchecked"])]),
        // The YAML model, validation with file:line:path, env interpolation, file watching.
        .target(
            name: "Config",
            dependencies: ["YAML"]),
        // The data plane: HTTP/1 head parser on ByteBuffer, downstream and upstream handlers,
        // HTTP/2 connections (swift-nio-http2) whose streams the same handlers serve, per-loop
        // pools, limits, timeouts.
        .target(
            name: "Proxy",
            dependencies: [
                "Config", "Scripting", "Plugins", "CLuaRuntime", "HTTPClient", "Telemetry", "SocketLoop", "TLS",
                .product(name: "CompressNIO", package: "compress-nio"),
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "NIOConcurrencyHelpers", package: "swift-nio"),
                .product(name: "NIOPosix", package: "swift-nio"),
                .product(name: "NIOHTTP1", package: "swift-nio"),
                .product(name: "NIOHTTP2", package: "swift-nio-http2"),
                .product(name: "NIOHPACK", package: "swift-nio-http2"),
                .product(name: "Logging", package: "swift-log"),
            ],
            swiftSettings: [
                // The data plane's handlers are loop-confined final classes; the runtime's
                // dynamic exclusivity checks cost ~4% of CPU per request here (perf, scripts/bench).
                .unsafeFlags(["-enforce-exclusivity=unchecked"])
            ]),
        // The Lua runtime: states with the sandbox and budgets, per-loop pools, policy loading
        // and validation, the module registry (`LuaModule`), and the built-in modules.
        .target(
            name: "Scripting",
            dependencies: [
                "Config", "CLuaRuntime", "Telemetry",
                .product(name: "Logging", package: "swift-log"),
            ],
            swiftSettings: [
                // Per request (state checkout, phases, API calls); loop-confined classes, as in Proxy.
                .unsafeFlags(["-enforce-exclusivity=unchecked"])
            ]),
        // Authenticators for scripts: `jwt` (HS/RS/PS/ES/EdDSA, keysets, claims).
        .target(
            name: "Auth",
            dependencies: [
                "Config", "Scripting", "CLuaRuntime", "CJOSE", "HTTPClient", "Telemetry", "SocketLoop",
                .product(name: "Logging", package: "swift-log"),
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "NIOPosix", package: "swift-nio"),
                .product(name: "NIOHTTP1", package: "swift-nio"),
            ],
            swiftSettings: [
                // jwt.verify runs per request; no shared mutable state in it.
                .unsafeFlags(["-enforce-exclusivity=unchecked"])
            ]),
        // Plugins: packaged Lua policies with a schema, chained per route. The built-ins'
        // sources are embedded in the binary; `crypto`, `ip` and `kv` are the API they need.
        .target(
            name: "Plugins",
            dependencies: [
                "Config", "Scripting", "CLuaRuntime", "COpenSSL", "CJOSE", "Redis",
                .product(name: "NIOConcurrencyHelpers", package: "swift-nio"),
                .product(name: "Logging", package: "swift-log"),
            ],
            exclude: ["tests"],
            resources: [
                .embedInCode("lua/acl.lua"),
                .embedInCode("lua/basic-auth.lua"),
                .embedInCode("lua/correlation-id.lua"),
                .embedInCode("lua/cors.lua"),
                .embedInCode("lua/ip-restriction.lua"),
                .embedInCode("lua/jwt-auth.lua"),
                .embedInCode("lua/key-auth.lua"),
                .embedInCode("lua/oauth2-introspection.lua"),
                .embedInCode("lua/rate-limiting.lua"),
                .embedInCode("lua/redirect.lua"),
                .embedInCode("lua/request-size-limiting.lua"),
                .embedInCode("lua/request-termination.lua"),
                .embedInCode("lua/request-transformer.lua"),
                .embedInCode("lua/response-transformer.lua"),
                .embedInCode("lua/session.lua"),
            ]),
        // `moongate test`: runs *_test.lua files against a simulated gateway (describe/it,
        // assert, harness.request, upstream stubs, fake clock, captured logs), and reports.
        .target(
            name: "Harness",
            dependencies: [
                "Config", "Scripting", "Proxy", "Plugins", "CLuaRuntime", "Auth", "RateLimit", "Telemetry",
                .product(name: "Logging", package: "swift-log"),
            ]),
        // For tests of a gateway: one config and its policies run in-process (the real handlers
        // over in-memory pipes, on a clock the test moves) or live on sockets, the same way.
        .target(
            name: "MoongateTesting",
            dependencies: [
                "Config", "Proxy", "Gateway", "Harness", "HTTPClient",
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "NIOPosix", package: "swift-nio"),
                .product(name: "NIOHTTP1", package: "swift-nio"),
                .product(name: "Logging", package: "swift-log"),
            ]),
        // A PostgreSQL client for the config store: the protocol as a state machine value,
        // SCRAM-SHA-256 on OpenSSL, statements pipelined on a NIO channel, LISTEN/NOTIFY.
        .target(
            name: "Postgres",
            dependencies: [
                "COpenSSL",
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "NIOPosix", package: "swift-nio"),
            ]),
        // Workers, listeners, config generations, reload and graceful shutdown.
        .target(
            name: "Gateway",
            dependencies: [
                "Config", "Proxy", "Auth", "Scripting", "Plugins", "RateLimit", "Redis", "HTTPClient", "Telemetry", "SocketLoop",
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "NIOPosix", package: "swift-nio"),
                .product(name: "NIOHTTP1", package: "swift-nio"),
                .product(name: "Prometheus", package: "swift-prometheus"),
                .product(name: "Logging", package: "swift-log"),
                // swift-service-lifecycle's signals only: its ServiceGroup, for the one service the
                // gateway runs, linked swift-async-algorithms (1 MB of the image) for nothing.
                .product(name: "UnixSignals", package: "swift-service-lifecycle"),
                "Postgres",
                "CJOSE",
            ]),
        // `moongate echo`: a small upstream that answers with what it received.
        .target(
            name: "EchoUpstream",
            dependencies: [
                "Config",
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "NIOPosix", package: "swift-nio"),
                .product(name: "NIOHTTP1", package: "swift-nio"),
                .product(name: "NIOConcurrencyHelpers", package: "swift-nio"),
            ]),
        // `moongate-bench-tls`: our OpenSSL streams against swift-nio-ssl, for scripts/bench.
        .executableTarget(
            name: "BenchTLS",
            dependencies: [
                "TLS", "SocketLoop",
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "NIOPosix", package: "swift-nio"),
                .product(name: "NIOSSL", package: "swift-nio-ssl"),
                .product(name: "ArgumentParser", package: "swift-argument-parser"),
            ]),
        .executableTarget(
            name: "moongate",
            dependencies: [
                "Config", "Gateway", "Proxy", "Scripting", "Harness", "Plugins", "Auth", "RateLimit", "EchoUpstream", "CLua", "CHiredis", "COpenSSL", "Telemetry",
                "TLS", "SocketLoop",
                .product(name: "NIOPosix", package: "swift-nio"),
                .product(name: "ArgumentParser", package: "swift-argument-parser"),
                .product(name: "CoreMetrics", package: "swift-metrics"),
                .product(name: "Prometheus", package: "swift-prometheus"),
                .product(name: "Logging", package: "swift-log"),
            ],
            // The static standard library's link flags export every symbol dynamically (2.4 MB
            // of symbol tables nothing looks up: a crash report reads the unstripped binary).
            linkerSettings: [.unsafeFlags(["-Xlinker", "--no-export-dynamic"])]),
        // Counts each thread's heap allocations (the test binary's own malloc, handing over
        // to glibc's): the allocation test of the proxy's hot path.
        .target(
            name: "AllocationCounter",
            path: "Tests/AllocationCounter"),
        // What the test servers and suites share: free ports, running a tool.
        .target(
            name: "TestSupport",
            path: "Tests/TestSupport"),
        // A real redis-server for the tests that need one (started on a free port, killable).
        .target(
            name: "RedisTestServer",
            dependencies: ["Redis", "TestSupport"],
            path: "Tests/RedisTestServer"),
        // A real PostgreSQL server for the config store's tests (a new cluster on a free port).
        .target(
            name: "PostgresTestServer",
            dependencies: ["TestSupport"],
            path: "Tests/PostgresTestServer"),
        .testTarget(
            name: "RateLimitTests",
            dependencies: [
                "RateLimit", "Redis", "RedisTestServer", "Config", "Harness", "Scripting", "CBuckets",
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "NIOPosix", package: "swift-nio"),
            ]),
        .testTarget(
            name: "HarnessTests",
            dependencies: ["Harness", "Config", "TestSupport"]),
        .testTarget(
            name: "AuthTests",
            dependencies: ["Auth", "Harness", "Config", "Scripting", "CJOSE"],
            resources: [.copy("Fixtures")]),
        .testTarget(
            name: "ScriptingTests",
            dependencies: ["Scripting", "Config", "CLuaRuntime", "CLua"]),
        .testTarget(
            name: "TLSTests",
            dependencies: ["TLS", "CTLS", "COpenSSL", "SocketLoop", "TestSupport", .product(name: "NIOCore", package: "swift-nio")]),
        .testTarget(
            name: "PostgresTests",
            dependencies: ["Postgres", "PostgresTestServer", "TestSupport", .product(name: "NIOPosix", package: "swift-nio")]),
        .testTarget(
            name: "ConfigTests",
            dependencies: ["Config", "YAML"]),
        .testTarget(
            name: "SocketLoopTests",
            dependencies: [
                "SocketLoop",
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "NIOPosix", package: "swift-nio"),
            ]),
        .testTarget(
            name: "ProxyTests",
            dependencies: [
                "Proxy", "TestSupport",
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "NIOHPACK", package: "swift-nio-http2"),
            ]),
        .testTarget(
            name: "GatewayTests",
            dependencies: [
                "Gateway", "Config", "EchoUpstream", "Auth", "CJOSE", "RedisTestServer", "PostgresTestServer", "TestSupport", "Redis", "Telemetry", "AllocationCounter", "MoongateTesting", "Harness",
                .product(name: "NIOSSL", package: "swift-nio-ssl"),
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "NIOPosix", package: "swift-nio"),
                .product(name: "NIOHTTP1", package: "swift-nio"),
            ],
            // Run by the tests with the venv's Python (MOONGATE_PYTHON), found next to them.
            exclude: ["Support/h2attack.py"]),
    ],
    swiftLanguageModes: [.v6]
)

// A member is visible only where its module is imported: without this, a Foundation API
// reached through another module's import links the whole of Foundation and ICU's data
// into the gateway, with nothing in the file saying so.
for target in package.targets where target.type == .regular || target.type == .executable {
    target.swiftSettings = (target.swiftSettings ?? []) + [.enableUpcomingFeature("MemberImportVisibility")]
}

// Code that runs at start-up, on reload or on a person's command is optimized for size; the
// data plane's modules (Proxy, SocketLoop, Scripting, Auth, Plugins, RateLimit, Redis, TLS,
// Telemetry) stay optimized for speed.
let coldTargets: Set<String> = ["YAML", "Config", "Postgres", "Gateway", "Harness", "EchoUpstream", "moongate"]
for target in package.targets where coldTargets.contains(target.name) {
    target.swiftSettings = (target.swiftSettings ?? []) + [.unsafeFlags(["-Osize"], .when(configuration: .release))]
}
