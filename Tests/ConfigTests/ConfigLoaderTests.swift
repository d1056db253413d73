import Testing

@testable import Config

@Suite struct ConfigLoaderTests {
    static let minimal = """
        listeners:
          - address: 127.0.0.1:8080
        upstreams:
          app:
            targets: [ "127.0.0.1:9000" ]
        routes:
          - match: { path_prefix: / }
            upstream: app
        """

    func errors(_ yaml: String, env: [String: String] = [:]) -> [String] {
        do {
            _ = try ConfigLoader.parse(yaml, file: "gateway.yaml", environment: env)
            return []
        } catch {
            return error.diagnostics.map(\.description)
        }
    }

    @Test func loadsAMinimalConfigWithDefaults() throws {
        let c = try ConfigLoader.parse(Self.minimal, file: "gateway.yaml")
        #expect(c.listeners[0].address == SocketAddressSpec(host: "127.0.0.1", port: 8080))
        #expect(c.upstreams[0].connectTimeout == .seconds(2))
        #expect(c.limits.maxHeaderBytes == 16384)
        #expect(c.routes[0].path == .prefix("/"))
        #expect(c.logLevel == "info")
    }

    @Test func http2IsH2cOnClearListenersAndAnALPNOfferOnTLSOnes() throws {
        let c = try ConfigLoader.parse(
            Self.minimal.replacingOccurrences(of: "  - address: 127.0.0.1:8080", with: "  - address: 127.0.0.1:8080\n    h2c: true")
                + "\nlimits:\n  max_concurrent_streams: 50\n", file: "gateway.yaml")
        #expect(c.listeners[0].h2c && c.listeners[0].servesHTTP2)
        #expect(c.limits.maxConcurrentStreams == 50)
        #expect(try ConfigLoader.parse(Self.minimal, file: "gateway.yaml").listeners[0].servesHTTP2 == false)
        let tls = """
            listeners:
              - address: 127.0.0.1:8443
                h2c: true
                tls: { certificates: [ { cert: a.pem, key: a.key } ] }
              - address: 127.0.0.1:8080
                http2: true
            upstreams:
              app:
                targets: [ "127.0.0.1:9000" ]
            routes:
              - match: { path_prefix: / }
                upstream: app
            limits:
              max_concurrent_streams: 0
            """
        let found = errors(tls)
        #expect(found.contains { $0.contains("listeners[0].h2c: h2c is HTTP/2 without TLS") }, "\(found)")
        #expect(found.contains { $0.contains("listeners[1].http2: http2 is a TLS listener's ALPN offer") }, "\(found)")
        #expect(found.contains { $0.contains("limits.max_concurrent_streams") }, "\(found)")
        // An upstream's protocol.
        let h2 = try ConfigLoader.parse(Self.minimal.replacingOccurrences(of: "targets: [ \"127.0.0.1:9000\" ]", with: "targets: [ \"127.0.0.1:9000\" ]\n    protocol: h2"), file: "gateway.yaml")
        #expect(h2.upstreams[0].h2)
        let bad = errors(Self.minimal.replacingOccurrences(of: "targets: [ \"127.0.0.1:9000\" ]", with: "targets: [ \"127.0.0.1:9000\" ]\n    protocol: spdy"))
        #expect(bad.contains { $0.contains("upstreams.app.protocol: expected http1 or h2") }, "\(bad)")
    }

    @Test func namesFileLineAndPathOfAnUnknownUpstream() {
        let yaml = Self.minimal + """

              - name: billing
                match: { path_prefix: /billing }
                upstream: billing
            """
        #expect(errors(yaml) == [#"gateway.yaml:11 routes[1].upstream: unknown upstream "billing""#])
    }

    @Test func tracingTakesACollectorURLAndARatio() throws {
        let c = try ConfigLoader.parse(Self.minimal + "\ntracing:\n  endpoint: http://127.0.0.1:4318\n  sample_ratio: 0.25\n", file: "gateway.yaml")
        #expect(c.tracing.endpoint?.path == "/v1/traces")
        #expect(c.tracing.endpoint?.port == 4318)
        #expect(c.tracing.sampleRatio == 0.25)
        #expect(c.tracing.serviceName == "moongate")
        let bad = errors(Self.minimal + "\ntracing:\n  endpoint: grpc://collector:4317\n  sample_ratio: 2\n")
        #expect(bad.count == 2)
        #expect(bad.first?.hasPrefix("gateway.yaml:10 tracing.endpoint: expected http[s]://") == true, "\(bad)")
        #expect(bad.last?.hasPrefix("gateway.yaml:11 tracing.sample_ratio: expected a number from 0 to 1") == true, "\(bad)")
        // Protobuf and gzip unless told otherwise; anything else is named.
        #expect(c.tracing.encoding == .protobuf && c.tracing.gzip)
        let json = try ConfigLoader.parse(
            Self.minimal + "\ntracing:\n  endpoint: http://c:4318\n  protocol: http/json\n  compression: none\n", file: "gateway.yaml")
        #expect(json.tracing.encoding == .json && !json.tracing.gzip)
        let wrong = errors(Self.minimal + "\ntracing:\n  endpoint: http://c:4318\n  protocol: grpc\n  compression: zstd\n")
        #expect(wrong.contains { $0.contains("tracing.protocol: expected http/protobuf or http/json") }, "\(wrong)")
        #expect(wrong.contains { $0.contains("tracing.compression: expected gzip or none") }, "\(wrong)")
    }

    @Test func kvDefaultsToTheOnlyRedisAndNamesAnUnknownStore() throws {
        #expect(try ConfigLoader.parse(Self.minimal, file: "gateway.yaml").kv.store == "local")
        let redis = "\nredis:\n  main:\n    address: 127.0.0.1:6379\n"
        let one = try ConfigLoader.parse(Self.minimal + redis, file: "gateway.yaml")
        #expect(one.kv.store == "main")
        #expect(one.kv.prefix == "moongate:kv:")
        let chosen = try ConfigLoader.parse(Self.minimal + redis + "kv:\n  store: local\n  prefix: \"app:\"\n", file: "gateway.yaml")
        #expect(chosen.kv.store == "local")
        #expect(chosen.kv.prefix == "app:")
        let bad = errors(Self.minimal + redis + "kv:\n  store: cache\n")
        #expect(bad == ["gateway.yaml:13 kv.store: unknown store \"cache\" (expected local or a server under redis)"], "\(bad)")
    }

    @Test func refusesUnknownKeys() {
        let yaml = Self.minimal.replacingOccurrences(of: "upstream: app", with: "upstream: app\n    retries: 3")
        let found = errors(yaml)
        #expect(found.count == 1)
        #expect(found[0].hasPrefix("gateway.yaml:9 routes[0].retries: unknown key \"retries\""))
    }

    @Test func reportsEveryProblemNotJustTheFirst() {
        let yaml = """
            workers: lots
            log_level: loud
            listeners:
              - address: nowhere
            upstreams:
              app:
                targets: [ "127.0.0.1:9000" ]
                connect_timeout: soon
            routes:
              - match: { path_prefix: api }
                upstream: app
                max_body_bytes: huge
            """
        let found = errors(yaml)
        #expect(found.count == 6, "\(found)")
        #expect(found.contains { $0.hasPrefix("gateway.yaml:1 workers:") })
        #expect(found.contains { $0.hasPrefix("gateway.yaml:2 log_level: unknown log level") })
        #expect(found.contains { $0.hasPrefix("gateway.yaml:4 listeners[0].address: expected host:port") })
        #expect(found.contains { $0.hasPrefix("gateway.yaml:8 upstreams.app.connect_timeout: expected a duration") })
        #expect(found.contains { $0.hasPrefix("gateway.yaml:10 routes[0].match.path_prefix: expected a path starting with /") })
        #expect(found.contains { $0.hasPrefix("gateway.yaml:12 routes[0].max_body_bytes: expected a size") })
    }

    @Test func interpolatesEnvironmentVariables() throws {
        let yaml = Self.minimal
            .replacingOccurrences(of: "127.0.0.1:8080", with: "${HOST:-127.0.0.1}:${PORT}")
            .replacingOccurrences(of: "127.0.0.1:9000", with: "${UPSTREAM:-127.0.0.1:9999}")
        let c = try ConfigLoader.parse(yaml, file: "g.yaml", environment: ["PORT": "8181"])
        #expect(c.listeners[0].address.port == 8181)
        #expect(c.listeners[0].address.host == "127.0.0.1")
        #expect(c.upstreams[0].targets[0].address.port == 9999)
        #expect(errors(yaml) == [#"gateway.yaml:2 listeners[0].address: environment variable PORT is not set (use ${PORT:-default} for a default)"#])
    }

    @Test func escapesDollarBraces() throws {
        #expect(try EnvironmentInterpolation.expand("a$${B}c", environment: [:]) == "a${B}c")
        #expect(try EnvironmentInterpolation.expand("$5 and ${X:-}", environment: [:]) == "$5 and ")
    }

    @Test func reportsYAMLSyntaxErrorsWithTheirLine() {
        let found = errors("listeners:\n  - address: [unclosed\nroutes: []\n")
        #expect(found.count == 1)
        #expect(found[0].hasPrefix("gateway.yaml:"), "\(found)")
        #expect(found[0].contains("YAML"))
    }

    @Test func parsesUnits() {
        #expect(Units.duration("250ms") == .milliseconds(250))
        #expect(Units.duration("2s") == .seconds(2))
        #expect(Units.duration("1.5") == .milliseconds(1500))
        #expect(Units.duration("1m") == .seconds(60))
        #expect(Units.duration("-1s") == nil)
        #expect(Units.size("16k") == 16384)
        #expect(Units.size("10MB") == 10 << 20)
        #expect(Units.size("1GB") == 1 << 30)
        #expect(Units.size("12") == 12)
        #expect(Units.size("lots") == nil)
    }

    @Test func parsesAddresses() {
        #expect(SocketAddressSpec(parsing: "[::1]:8080") == SocketAddressSpec(host: "::1", port: 8080))
        #expect(SocketAddressSpec(parsing: ":9000") == SocketAddressSpec(host: "0.0.0.0", port: 9000))
        #expect(SocketAddressSpec(parsing: "localhost:70000") == nil)
        #expect(SocketAddressSpec(parsing: "::1:80") == nil)
    }

    @Test func refusesDuplicatesAndConflicts() {
        let yaml = """
            listeners:
              - address: 127.0.0.1:8080
              - address: 127.0.0.1:8080
            upstreams:
              app:
                targets: [ "127.0.0.1:9000" ]
            routes:
              - name: a
                match: { path_prefix: /, path: /x }
                upstream: app
              - name: a
                upstream: app
            """
        let found = errors(yaml)
        #expect(found.contains { $0.contains("listeners[1].address: address 127.0.0.1:8080 is already used") })
        #expect(found.contains { $0.contains("routes[0].match: give either path_prefix or path") })
        #expect(found.contains { $0.contains("routes[1].name: duplicate route name \"a\"") })
    }

    /// A duplicate key is a problem like any other: its line and path, and the others still
    /// reported.
    @Test func duplicateKeysAreReportedWithLineAndPath() {
        let found = errors("""
            listeners:
              - address: 127.0.0.1:8080
            upstreams:
              app:
                targets: [ "127.0.0.1:9000" ]
                targets: [ "127.0.0.1:9001" ]
            routes:
              - match: { path_prefix: /, path_prefix: /x }
                upstream: app
                upstream: other
              - match: { path_prefix: /b }
                upstream: missing
            upstreams:
              more: { targets: [ "127.0.0.1:1" ] }
            """)
        #expect(found == [
            "gateway.yaml:6 upstreams.app.targets: duplicate key \"targets\" (first at line 5)",
            "gateway.yaml:8 routes[0].match.path_prefix: duplicate key \"path_prefix\" (first at line 8)",
            "gateway.yaml:10 routes[0].upstream: duplicate key \"upstream\" (first at line 9)",
            "gateway.yaml:12 routes[1].upstream: unknown upstream \"missing\"",
            "gateway.yaml:13 upstreams: duplicate key \"upstreams\" (first at line 3)",
        ], "\(found)")
        #expect(!found.joined().contains("listeners:"), "no whole-file context")
        let quoted = errors(Self.minimal + "\n\"routes\": []\n")
        #expect(quoted == ["gateway.yaml:9 routes: duplicate key \"routes\" (first at line 6)"], "\(quoted)")
    }

    /// A route naming a policy the scripts directory lacks is reported with the config's other
    /// problems, at its line and path.
    @Test func missingPoliciesAreConfigProblems() throws {
        let folder = FileManager.default.temporaryDirectory.appendingPathComponent("moongate-config-\(UUID().uuidString)").path
        try FileManager.default.createDirectory(atPath: folder + "/policies/lib", withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(atPath: folder) }
        try "return {}".write(toFile: folder + "/policies/lib/here.lua", atomically: true, encoding: .utf8)
        try """
            listeners:
              - address: 127.0.0.1:8080
                router: routing.lua
            upstreams:
              app:
                targets: [ "127.0.0.1:9000" ]
            routes:
              - match: { path_prefix: /a }
                upstream: app
                policy: missing.lua
              - match: { path_prefix: /b }
                upstream: nowhere
                policy: lib/here.lua
            """.write(toFile: folder + "/gateway.yaml", atomically: true, encoding: .utf8)
        do {
            _ = try ConfigLoader.load(path: folder + "/gateway.yaml")
            Issue.record("expected errors")
        } catch {
            #expect(error.diagnostics.map(\.description) == [
                "gateway.yaml:3 listeners[0].router: no routing.lua in policies",
                "gateway.yaml:10 routes[0].policy: no missing.lua in policies",
                "gateway.yaml:12 routes[1].upstream: unknown upstream \"nowhere\"",
            ])
        }
    }

    @Test func theSandboxConfigsValidate() throws {
        let root = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent().deletingLastPathComponent()
        for file in ["sandbox/gateway.yaml", "sandbox/bench/gateway.yaml"] {
            let config = try ConfigLoader.load(path: root.appendingPathComponent(file).path, environment: [:])
            #expect(!config.routes.isEmpty, "\(file)")
        }
    }
}

import Foundation
