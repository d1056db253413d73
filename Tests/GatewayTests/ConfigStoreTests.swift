import Config
import Foundation
import TestSupport
import Gateway
import PostgresTestServer
import Testing

/// Gateways on a real PostgreSQL config store (a new cluster per test): seeding, writes
/// through one gateway served by the other, optimistic concurrency, validation, versions and
/// rollback, the store going away and coming back, the cache, and a version a gateway refuses.
@Suite(.serialized) struct ConfigStoreTests {
    static let token = AdminAPITests.token

    /// A gateway on `pg`'s store; its YAML's routes seed an empty store.
    static func config(_ pg: PostgresProcess, folder: String, cache: String?) -> String {
        """
        listeners:
          - name: test
            address: 127.0.0.1:@PORT@
        admin:
          address: 127.0.0.1:0
          token_file: \(folder)/admin.token
        store:
          kind: postgres
          url: \(pg.url)
          poll: 200ms
        \(cache.map { "  cache: \($0)" } ?? "")
        upstreams:
          echo:
            targets: [ "@ECHO@" ]
        routes:
          - name: hello
            match: { path: /hello }
            upstream: echo
            policy: hello.lua
          - name: default
            match: { path_prefix: /echo/ }
            upstream: echo
        """
    }

    struct Fleet {
        let pg: PostgresProcess
        let folder: String
        var gateways: [TestGateway]
    }

    static func withFleet<T>(_ count: Int = 2, _ body: (Fleet) async throws -> T) async throws -> T {
        let pg = try await onItsOwnThread { try PostgresProcess() }
        let folder = NSTemporaryDirectory() + "moongate-fleet-\(UUID().uuidString)"
        try FileManager.default.createDirectory(atPath: folder, withIntermediateDirectories: true)
        try "\(token.line)\n".write(toFile: folder + "/admin.token", atomically: true, encoding: .utf8)
        var gateways: [TestGateway] = []
        do {
            for _ in 0..<count {
                gateways.append(try await TestGateway.start(config(pg, folder: folder, cache: folder + "/cache-\(UUID().uuidString).json"), scripts: ["hello.lua": AdminAPITests.hello]))
            }
            let result = try await body(Fleet(pg: pg, folder: folder, gateways: gateways))
            for gw in gateways { await gw.stop() }
            try? FileManager.default.removeItem(atPath: folder)
            return result
        } catch {
            for gw in gateways { await gw.stop() }
            try? FileManager.default.removeItem(atPath: folder)
            throw error
        }
    }

    static func admin(_ gw: TestGateway, _ method: String, _ path: String, headers: [(String, String)] = [], body: String? = nil) async throws
        -> RawClient.Response
    {
        try await AdminAPITests.admin(gw, method, path, headers: headers, body: body)
    }

    /// Polls until `gw` answers `path` with `status`, for up to `seconds`; returns how long it took.
    @discardableResult
    static func eventually(_ gw: TestGateway, _ path: String, status: Int, within seconds: Double = 15) async throws -> Double {
        let start = Date()
        while Date().timeIntervalSince(start) < seconds {
            if (try? gw.client(timeout: 1).request("GET", path).status) == status { return Date().timeIntervalSince(start) }
            try await Task.sleep(for: .milliseconds(10))
        }
        throw AdminAPITests.Failure("\(path) did not answer \(status) within \(seconds) s")
    }

    static let newRoute = #"{"match":{"path_prefix":"/new/"},"upstream":"echo","strip_prefix":true}"#

    @Test func aWriteThroughOneGatewayIsServedByTheOther() async throws {
        try await Self.withFleet { fleet in
            let (a, b) = (fleet.gateways[0], fleet.gateways[1])
            // The first gateway seeded the store from its YAML; the second started from it.
            let seeded = try await Self.admin(b, "GET", "/v1/config")
            #expect(seeded.header("etag") == "\"1\"")
            #expect(try b.client().request("GET", "/hello").text == "hello")
            #expect(try b.client().request("GET", "/new/x").status == 404)

            let put = try await Self.admin(a, "PUT", "/v1/routes/new", body: Self.newRoute)
            #expect(put.status == 200)
            #expect(put.header("etag") == "\"2\"")
            #expect(try a.client().request("GET", "/new/x").status == 200)
            // Seconds, not the benchmark's milliseconds: other suites load the machine meanwhile.
            try await Self.eventually(b, "/new/x", status: 200)
            #expect(try await Self.admin(b, "GET", "/v1/config").header("etag") == "\"2\"")

            // The audit trail: who, when, what.
            let versions = try AdminAPITests.json(try await Self.admin(b, "GET", "/v1/config/versions"))
            guard case .array(let rows)? = versions["versions"] else { throw AdminAPITests.Failure("no versions") }
            #expect(rows.count == 2)
            #expect(rows.first?["token"]?.stringValue == "ops")
            #expect(rows.first?["summary"]?.stringValue == "added routes/new")
            #expect(rows.last?["token"]?.stringValue == "bootstrap")

            // Rollback: version 1 again, as version 3, on both.
            let rollback = try await Self.admin(b, "POST", "/v1/config/rollback", body: #"{"version":1}"#)
            #expect(rollback.status == 200)
            #expect(rollback.header("etag") == "\"3\"")
            try await Self.eventually(a, "/new/x", status: 404)
        }
    }

    @Test func aStaleIfMatchGets412AndNoUpdateIsLost() async throws {
        try await Self.withFleet { fleet in
            let (a, b) = (fleet.gateways[0], fleet.gateways[1])
            let read = try await Self.admin(a, "GET", "/v1/config")
            let etag = try #require(read.header("etag"))
            guard case .success(var document) = JSONValue.parse(read.body), case .object(var members) = document,
                case .array(var routes)? = members["routes"]
            else { throw AdminAPITests.Failure("bad document") }
            routes.append(.object(["name": "first", "match": .object(["path": "/first"]), "upstream": "echo"]))
            members["routes"] = .array(routes)
            document = .object(members)

            // Someone else writes first, through the other gateway.
            #expect(try await Self.admin(b, "PUT", "/v1/routes/second", body: #"{"match":{"path":"/second"},"upstream":"echo"}"#).status == 200)
            let stale = try await Self.admin(a, "PUT", "/v1/config", headers: [("If-Match", etag)], body: document.canonicalText)
            #expect(stale.status == 412)
            #expect(try AdminAPITests.json(stale)["version"] == .int(2))
            #expect(try await Self.admin(a, "PUT", "/v1/config", body: document.canonicalText).status == 428)
            // The second write survived; the stale one changed nothing.
            try await Self.eventually(a, "/second", status: 200)
            #expect(try a.client().request("GET", "/first").status == 404)

            // Two writers on the same version at once: one wins, the other gets 412.
            let current = try #require(try await Self.admin(a, "GET", "/v1/config").header("etag"))
            async let one = Self.admin(a, "PUT", "/v1/routes/r1", headers: [("If-Match", current)], body: #"{"match":{"path":"/r1"},"upstream":"echo"}"#)
            async let two = Self.admin(b, "PUT", "/v1/routes/r2", headers: [("If-Match", current)], body: #"{"match":{"path":"/r2"},"upstream":"echo"}"#)
            let statuses = try await [one.status, two.status].sorted()
            #expect(statuses == [200, 412])

            // Without If-Match, one-entity writes go on top of whatever is latest: both land.
            async let three = Self.admin(a, "PUT", "/v1/routes/r3", body: #"{"match":{"path":"/r3"},"upstream":"echo"}"#)
            async let four = Self.admin(b, "PUT", "/v1/routes/r4", body: #"{"match":{"path":"/r4"},"upstream":"echo"}"#)
            #expect(try await [three.status, four.status] == [200, 200])
            try await Self.eventually(a, "/r3", status: 200)
            try await Self.eventually(a, "/r4", status: 200)
            try await Self.eventually(b, "/r3", status: 200)
        }
    }

    @Test func anInvalidRouteGets422WithItsPointerAndNothingChanges() async throws {
        try await Self.withFleet(1) { fleet in
            let a = fleet.gateways[0]
            let generation = await a.gateway.generation?.id
            let bad = try await Self.admin(a, "PUT", "/v1/routes/billing", body: #"{"match":{"path":"/b"},"upstream":"billing"}"#)
            #expect(bad.status == 422)
            #expect(try AdminAPITests.json(bad)["errors"] == .array([.object(["path": "/routes/2/upstream", "message": "unknown upstream \"billing\""])]))
            let script = try await Self.admin(a, "PUT", "/v1/scripts/hello.lua", body: "return function(")
            #expect(script.status == 422)
            #expect(await a.gateway.generation?.id == generation)
            #expect(try await Self.admin(a, "GET", "/v1/config").header("etag") == "\"1\"")
            #expect(try a.client().request("GET", "/hello").text == "hello")

            // A script changed through the API: compiled, stored, served.
            let changed = try await Self.admin(
                a, "PUT", "/v1/scripts/hello.lua", body: "return { access = function() request.respond(200, 'hello again') end }")
            #expect(changed.status == 200)
            #expect(try a.client().request("GET", "/hello").text == "hello again")
        }
    }

    /// Polls until `gw` answers `path`, sent with `header: sent`, with `header` equal to
    /// `value` (nil: absent).
    static func eventually(
        _ gw: TestGateway, _ path: String, header: String, sent: String, _ value: String?, within seconds: Double = 15
    ) async throws {
        let start = Date()
        while Date().timeIntervalSince(start) < seconds {
            if let response = try? gw.client(timeout: 1).request("GET", path, headers: [(header, sent)]), response.status == 200,
                response.header(header) == value
            {
                return
            }
            try await Task.sleep(for: .milliseconds(10))
        }
        throw AdminAPITests.Failure("\(path) did not answer with \(header): \(value ?? "none") within \(seconds) s")
    }

    @Test func theGlobalPluginChainIsWrittenThroughTheAPIAndServedByTheFleet() async throws {
        try await Self.withFleet { fleet in
            let (a, b) = (fleet.gateways[0], fleet.gateways[1])
            #expect(try AdminAPITests.json(try await Self.admin(a, "GET", "/v1/plugins")) == .object(["plugins": .array([])]))
            let put = try await Self.admin(a, "PUT", "/v1/plugins/correlation-id", body: #"{"config":{"header":"X-Trace","generator":"request_id"}}"#)
            #expect(put.status == 200, "\(put.text)")
            #expect(try AdminAPITests.json(put)["changes"] == .array([.object(["section": "plugins", "name": "correlation-id", "change": "added"])]))
            // Every route, on both gateways.
            #expect(try a.client().request("GET", "/hello").header("x-trace") != nil)
            try await Self.eventually(b, "/echo/x", header: "X-Trace", sent: "t-1", "t-1")
            let listed = try AdminAPITests.json(try await Self.admin(b, "GET", "/v1/plugins/correlation-id"))
            #expect(listed == .object(["name": "correlation-id", "config": .object(["header": "X-Trace", "generator": "request_id"])]))

            // Checked against the plugin's schema: 422 with a pointer into the document, nothing changed.
            let bad = try await Self.admin(a, "PUT", "/v1/plugins/correlation-id", body: #"{"config":{"generator":"sequential"}}"#)
            #expect(bad.status == 422)
            let errors = try AdminAPITests.json(bad)["errors"]
            #expect(Self.paths(errors) == ["/plugins/0/config/generator"], "\(bad.text)")
            let unknown = try await Self.admin(a, "PUT", "/v1/plugins/no-such-plugin", body: "{}")
            #expect(unknown.status == 422)
            #expect(Self.paths(try AdminAPITests.json(unknown)["errors"]) == ["/plugins/1/name"], "\(unknown.text)")
            #expect(try await Self.admin(a, "GET", "/v1/config").header("etag") == "\"2\"")

            // Removed: gone from both.
            #expect(try await Self.admin(b, "DELETE", "/v1/plugins/correlation-id").status == 200)
            try await Self.eventually(a, "/echo/x", header: "X-Trace", sent: "t-1", nil)
        }
    }

    static func paths(_ errors: JSONValue?) -> [String] {
        guard case .array(let items)? = errors else { return [] }
        return items.compactMap { $0["path"]?.stringValue }
    }

    @Test func theStoreGoingAwayChangesNothingServedAndWritesAnswer503() async throws {
        try await Self.withFleet { fleet in
            let (a, b) = (fleet.gateways[0], fleet.gateways[1])
            #expect(try await Self.admin(a, "PUT", "/v1/routes/new", body: Self.newRoute).status == 200)
            try await Self.eventually(b, "/new/x", status: 200)
            try await onItsOwnThread { fleet.pg.kill() }
            for _ in 0..<20 {
                #expect(try a.client().request("GET", "/new/x").status == 200)
                #expect(try b.client().request("GET", "/hello").status == 200)
            }
            let refused = try await Self.admin(a, "PUT", "/v1/routes/other", body: #"{"match":{"path":"/other"},"upstream":"echo"}"#)
            #expect(refused.status == 503)
            // The gateway notices and says so on /readyz (still ready: it serves its last good version).
            var reachable: JSONValue? = .bool(true)
            for _ in 0..<100 where reachable == .bool(true) {
                let ready = try await Self.admin(b, "GET", "/readyz")
                #expect(ready.status == 200)
                reachable = try AdminAPITests.json(ready)["store"]?["reachable"]
                try await Task.sleep(for: .milliseconds(50))
            }
            #expect(reachable == .bool(false))

            try await onItsOwnThread { try fleet.pg.start() }
            // Back: the gateways reconnect and writes work again, served by both.
            var last: RawClient.Response?
            for _ in 0..<100 where last?.status != 200 {
                last = try await Self.admin(a, "PUT", "/v1/routes/other", body: #"{"match":{"path":"/other"},"upstream":"echo"}"#)
                if last?.status != 200 { try await Task.sleep(for: .milliseconds(100)) }
            }
            #expect(last?.status == 200, "\(last?.text ?? "")")
            try await Self.eventually(b, "/other", status: 200, within: 6)
        }
    }

    @Test func aGatewayStartedWhileTheStoreIsDownBootsFromTheCache() async throws {
        let pg = try await onItsOwnThread { try PostgresProcess() }
        let folder = NSTemporaryDirectory() + "moongate-cache-\(UUID().uuidString)"
        try FileManager.default.createDirectory(atPath: folder, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(atPath: folder) }
        try "\(Self.token.line)\n".write(toFile: folder + "/admin.token", atomically: true, encoding: .utf8)
        let yaml = Self.config(pg, folder: folder, cache: folder + "/cache.json")
        let first = try await TestGateway.start(yaml, scripts: ["hello.lua": AdminAPITests.hello])
        #expect(try await Self.admin(first, "PUT", "/v1/routes/new", body: Self.newRoute).status == 200)
        await first.stop()
        try await onItsOwnThread { pg.kill() }

        let second = try await TestGateway.start(yaml, scripts: ["hello.lua": "return { access = function() request.respond(200, 'not this') end }"])
        // Routed (to the first gateway's echo upstream, now gone: 502), not unknown (404).
        #expect(try second.client().request("GET", "/new/x").status == 502)
        #expect(try second.client().request("GET", "/hello").text == "hello")
        let status = try AdminAPITests.json(try await Self.admin(second, "GET", "/status"))
        #expect(status["store"]?["booted_from_cache"] == .bool(true))
        #expect(status["store"]?["version"] == .int(2))
        await second.stop()

        // No store and no cache: the gateway does not start (it would serve a stale file).
        let noCache = Self.config(pg, folder: folder, cache: nil)
        await #expect(throws: (any Error).self) { try await TestGateway.start(noCache, scripts: ["hello.lua": AdminAPITests.hello]) }
    }

    @Test func aVersionThatFailsValidationHereChangesNothingAndIsReported() async throws {
        try await Self.withFleet(1) { fleet in
            let a = fleet.gateways[0]
            // A newer gateway (say) wrote a document this one does not accept.
            let document = #"{"routes":[{"name":"x","match":{"path":"/x"},"upstream":"nowhere"}],"upstreams":{},"keysets":{},"apikeys":{},"scripts":{}}"#
            _ = try fleet.pg.psql(
                "INSERT INTO moongate_config_versions (version, document, token_id, summary) VALUES (2, '\(document)', 'newer', 'x'); NOTIFY moongate_config, '2'"
            )
            var refused: JSONValue?
            for _ in 0..<100 where refused == nil {
                refused = try AdminAPITests.json(try await Self.admin(a, "GET", "/status"))["store"]?["refused"]
                try await Task.sleep(for: .milliseconds(20))
            }
            #expect(refused?["version"] == .int(2))
            #expect(refused.map { "\($0)" }?.contains("unknown upstream") == true)
            #expect(try a.client().request("GET", "/hello").text == "hello")
            #expect(try await Self.admin(a, "GET", "/v1/config").header("etag") == "\"1\"")
            let metrics = try await Self.admin(a, "GET", "/metrics").text
            #expect(metrics.contains("moongate_config_store_refused_total 1"))
        }
    }
}
