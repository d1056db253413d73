import Config
import Foundation
import Gateway
import Testing

/// The admin API on a gateway whose configuration is its YAML file (`store.kind: file`):
/// reads, dry runs, tokens, and writes refused with `409`.
@Suite struct AdminAPITests {
    static let token = AdminTokens.make(id: "ops")

    static func config(tokenFile: String?) -> String {
        """
        listeners:
          - name: test
            address: 127.0.0.1:@PORT@
        admin:
          address: 127.0.0.1:0
        \(tokenFile.map { "  token_file: \($0)" } ?? "")
        upstreams:
          echo:
            targets: [ "@ECHO@" ]
        routes:
          - name: hello
            match: { path: /hello }
            upstream: echo
            policy: hello.lua
          - name: default
            match: { path_prefix: / }
            upstream: echo
        """
    }

    static let hello = "return { access = function() request.respond(200, 'hello') end }"

    /// An admin request (off the test's executor: `RawClient` blocks).
    static func admin(
        _ gw: TestGateway, _ method: String, _ path: String, token: String? = AdminAPITests.token.token, headers: [(String, String)] = [],
        body: String? = nil
    ) async throws -> RawClient.Response {
        let port = try #require(await gw.gateway.adminPort())
        var all = headers
        if let token { all.append(("Authorization", "Bearer \(token)")) }
        let sent = all
        // 30 s: a dry run validates a whole generation, which at the start of a full parallel
        // suite on two cores once took longer than the client's default 10 s.
        return try await offThePool { try RawClient(port: port, timeout: 30).request(method, path, headers: sent, body: body.map { Array($0.utf8) }) }
    }

    static func json(_ response: RawClient.Response) throws -> JSONValue {
        guard case .success(let value) = JSONValue.parse(response.body) else { throw Failure("not JSON: \(response.text)") }
        return value
    }

    struct Failure: Error, CustomStringConvertible {
        let description: String
        init(_ d: String) { description = d }
    }

    static func withTokens<T>(_ body: (TestGateway) async throws -> T) async throws -> T {
        let folder = NSTemporaryDirectory() + "moongate-tokens-\(UUID().uuidString)"
        try FileManager.default.createDirectory(atPath: folder, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(atPath: folder) }
        let file = folder + "/admin.token"
        try "# ops team\n\(token.line)\n".write(toFile: file, atomically: true, encoding: .utf8)
        return try await withGateway(config(tokenFile: file), scripts: ["hello.lua": hello], body)
    }

    @Test func readsTheRunningConfigurationWithAnETag() async throws {
        try await Self.withTokens { gw in
            let response = try await Self.admin(gw, "GET", "/v1/config")
            #expect(response.status == 200)
            let etag = try #require(response.header("etag"))
            let document = try Self.json(response)
            guard case .array(let routes)? = document["routes"] else { throw Failure("no routes") }
            #expect(routes.map { $0["name"]?.stringValue } == ["hello", "default"])
            #expect(document["scripts"]?["hello.lua"]?.stringValue == Self.hello)
            #expect(try await Self.admin(gw, "GET", "/v1/config").header("etag") == etag)

            let route = try await Self.admin(gw, "GET", "/v1/routes/hello")
            #expect(try Self.json(route)["upstream"]?.stringValue == "echo")
            let script = try await Self.admin(gw, "GET", "/v1/scripts/hello.lua")
            #expect(script.text == Self.hello)
            #expect(script.header("content-type")?.hasPrefix("text/x-lua") == true)
            #expect(try await Self.admin(gw, "GET", "/v1/routes/nope").status == 404)
            #expect(try await Self.admin(gw, "GET", "/v1/upstreams/echo").status == 200)
        }
    }

    @Test func missingOrWrongTokensGet401AndTheObservabilityPagesStayOpen() async throws {
        try await Self.withTokens { gw in
            let missing = try await Self.admin(gw, "GET", "/v1/config", token: nil)
            #expect(missing.status == 401)
            #expect(missing.header("www-authenticate")?.hasPrefix("Bearer") == true)
            #expect(try await Self.admin(gw, "GET", "/v1/config", token: "not-the-token").status == 401)
            #expect(try await Self.admin(gw, "PUT", "/v1/routes/x", token: nil, body: "{}").status == 401)
            #expect(try await Self.admin(gw, "GET", "/v1/config", token: nil, headers: [("Authorization", "Basic b3BzOm9wcw==")]).status == 401)
            #expect(try await Self.admin(gw, "GET", "/healthz", token: nil).status == 200)
            #expect(try await Self.admin(gw, "GET", "/metrics", token: nil).status == 200)
        }
    }

    @Test func writesAnswer409NamingTheFileAndChangeNothing() async throws {
        try await Self.withTokens { gw in
            let etag = try #require(try await Self.admin(gw, "GET", "/v1/config").header("etag"))
            let put = try await Self.admin(gw, "PUT", "/v1/routes/extra", body: #"{"match":{"path":"/extra"},"upstream":"echo"}"#)
            #expect(put.status == 409)
            #expect(try Self.json(put)["source"]?.stringValue == gw.configPath)
            #expect(try await Self.admin(gw, "DELETE", "/v1/routes/hello").status == 409)
            let document = try await Self.admin(gw, "GET", "/v1/config").text
            let replace = try await Self.admin(gw, "PUT", "/v1/config", headers: [("If-Match", etag)], body: document)
            #expect(replace.status == 409)
            #expect(try await Self.admin(gw, "POST", "/v1/config/rollback", body: #"{"version":1}"#).status == 409)
            #expect(try gw.client().request("GET", "/hello").text == "hello")
        }
    }

    @Test func dryRunValidatesAsTheFileIsValidatedAndReturnsTheChanges() async throws {
        try await Self.withTokens { gw in
            let generation = await gw.gateway.generation?.id
            // An unknown upstream: the YAML's message, at a JSON pointer.
            let bad = try await Self.admin(gw, "PUT", "/v1/routes/billing?dry_run=true", body: #"{"match":{"path":"/b"},"upstream":"billing"}"#)
            #expect(bad.status == 422)
            let errors = try Self.json(bad)["errors"]
            #expect(errors == .array([.object(["path": "/routes/2/upstream", "message": "unknown upstream \"billing\""])]))

            // A script that does not compile: its path in /scripts and the line.
            let script = try await Self.admin(gw, "PUT", "/v1/scripts/hello.lua?dry_run=true", body: "return {")
            #expect(script.status == 422)
            #expect(script.text.contains("/scripts/hello.lua"))
            #expect(script.text.contains("line 1"))

            // A whole document: shape errors have pointers too.
            let shape = try await Self.admin(gw, "PUT", "/v1/config?dry_run=true", body: #"{"routes":[],"extra":1}"#)
            #expect(shape.status == 422)
            #expect(shape.text.contains("\"/extra\""))
            let notJSON = try await Self.admin(gw, "PUT", "/v1/config?dry_run=true", body: "{")
            #expect(notJSON.status == 400)

            let good = try await Self.admin(gw, "PUT", "/v1/routes/new?dry_run=true", body: #"{"match":{"path":"/new"},"upstream":"echo"}"#)
            #expect(good.status == 200)
            #expect(try Self.json(good)["changes"] == .array([.object(["section": "routes", "name": "new", "change": "added"])]))
            let delete = try await Self.admin(gw, "DELETE", "/v1/routes/hello?dry_run=true")
            #expect(try Self.json(delete)["changes"] == .array([.object(["section": "routes", "name": "hello", "change": "removed"])]))

            #expect(await gw.gateway.generation?.id == generation)
            #expect(try gw.client().request("GET", "/new").status == 200)  // the default route, not "new"
            #expect(try gw.client().request("GET", "/hello").text == "hello")
        }
    }

    @Test func badRequestsGetClearAnswers() async throws {
        try await Self.withTokens { gw in
            #expect(try await Self.admin(gw, "POST", "/v1/config").status == 405)
            #expect(try await Self.admin(gw, "GET", "/v1/nothing").status == 404)
            #expect(try await Self.admin(gw, "GET", "/v1/routes/a/b").status == 404)
            #expect(try await Self.admin(gw, "GET", "/v1/routes/%zz").status == 400)
            #expect(try await Self.admin(gw, "GET", "/v1/config/versions?limit=0").status == 400)
            let big = String(repeating: "x", count: 17 << 20)
            #expect(try await Self.admin(gw, "PUT", "/v1/scripts/big.lua", body: big).status == 413)
            let openapi = try await Self.admin(gw, "GET", "/openapi.json", token: nil)
            #expect(openapi.status == 200)
            #expect(try Self.json(openapi)["openapi"]?.stringValue == "3.1.0")
        }
    }

    @Test func aTokenFileIsRequiredOffLoopback() throws {
        let yaml = """
            listeners: [{ address: "127.0.0.1:0" }]
            admin: { address: "0.0.0.0:9901" }
            upstreams: { a: { targets: ["127.0.0.1:1"] } }
            routes: [{ match: { path_prefix: / }, upstream: a }]
            """
        #expect(throws: ConfigError.self) { try ConfigLoader.parse(yaml, file: "g.yaml") }
        do {
            _ = try ConfigLoader.parse(yaml, file: "g.yaml")
        } catch {
            #expect(error.diagnostics.first?.path == "admin.token_file")
        }
    }
}
