import Auth
import CJOSE
import Foundation
import NIOCore
import NIOHTTP1
import NIOPosix
import Testing

/// A keyset with a JWKS URL, against a real local HTTP server: rotation picked up on an
/// unknown kid, removed keys gone after the refetch, the last good keys kept when the
/// provider is down.
@Suite(.serialized) struct JWKSTests {
    /// Serves `document` at any path, counting fetches; `stop()` takes it down.
    /// A JWKS provider whose document a test may change or take down.
    final class JWKSServer: @unchecked Sendable {
        private let lock = NSLock()
        private var current: String
        private var server: TestHTTPServer!

        var document: String {
            get { lock.withLock { current } }
            set { lock.withLock { current = newValue } }
        }

        var port: Int { server.port }

        init(_ document: String, tls: Bool = false) async throws {
            current = document
            server = try await TestHTTPServer(tls: tls ? (TestCertificates.server, TestCertificates.serverKey) : nil) { [unowned self] _ in
                TestHTTPServer.Answer(body: self.document)
            }
        }

        func stop() async { await server.stop() }
    }

    static func jwks(_ keys: [(kid: String, secret: String)]) -> String {
        let entries = keys.map { #"{"kty":"oct","kid":"\#($0.kid)","k":"\#(Base64URL.encode(Array($0.secret.utf8)))"}"# }
        return #"{"keys":[\#(entries.joined(separator: ","))]}"#
    }

    static func token(kid: String, secret: String) -> String {
        let header = #"{"alg":"HS256","kid":"\#(kid)"}"#
        let input = Base64URL.encode(Array(header.utf8)) + "." + Base64URL.encode(Array(#"{"sub":"a","exp":4102444800}"#.utf8))
        var mac = [UInt8](repeating: 0, count: 64)
        let n = Array(input.utf8).withUnsafeBufferPointer { p in
            Array(secret.utf8).withUnsafeBufferPointer { s in mg_hmac(MG_ALG_HS256, s.baseAddress, s.count, p.baseAddress, p.count, &mac) }
        }
        return input + "." + Base64URL.encode(Array(mac[0..<n]))
    }

    static func config(jwksPort: Int, url: String? = nil, ca: String? = nil) -> String {
        """
        listeners:
          - name: test
            address: 127.0.0.1:@PORT@
        keysets:
          idp:
            algorithms: [HS256]
            jwks_url: "\(url ?? "http://127.0.0.1:\(jwksPort)/jwks")"
            jwks_refresh: 1h
            jwks_min_refetch: 0s
        \(ca.map { "    jwks_ca_file: \"\($0)\"" } ?? "")
        upstreams:
          echo:
            targets: [ "@ECHO@" ]
        routes:
          - match: { path_prefix: / }
            upstream: echo
            policy: auth.lua
        """
    }

    static let policy = """
        return { access = function()
          local claims, reason = jwt.verify((request.header("Authorization") or ""):match("^Bearer (.+)$"), "idp")
          if not claims then request.respond(401, reason) end
        end }
        """

    @Test func rotationAndAProviderThatGoesDown() async throws {
        let server = try await JWKSServer(Self.jwks([("a", "secret-a")]))
        try await withGateway(Self.config(jwksPort: server.port), workers: 2, scripts: ["auth.lua": Self.policy]) { gw in
            func answer(_ kid: String, _ secret: String) throws -> RawClient.Response {
                try gw.client().request("GET", "/", headers: [("Authorization", "Bearer " + Self.token(kid: kid, secret: secret))])
            }
            /// Keeps asking until the gateway answers `status`, for up to 10 s. It waits with
            /// `Task.sleep`, giving its thread back: the refetch runs as a task on the same
            /// cooperative pool, which other suites' blocking clients can hold for seconds.
            func eventually(_ kid: String, _ secret: String, _ status: Int) async throws -> Int {
                let start = Date()
                var got = try answer(kid, secret).status
                while got != status, Date().timeIntervalSince(start) < 10 {
                    try await Task.sleep(for: .milliseconds(50))
                    got = try answer(kid, secret).status
                }
                return got
            }
            // Fetched before the first request.
            #expect(try answer("a", "secret-a").status == 200)
            // The provider rotates: the unknown kid asks for a refetch, then verifies.
            server.document = Self.jwks([("b", "secret-b")])
            let first = try answer("b", "secret-b")
            #expect(first.status == 401 && first.text == "unknown_kid")
            let verified = try await eventually("b", "secret-b", 200)
            #expect(verified == 200)
            // A removed key stops verifying (on every worker: each gets the new set a moment apart).
            let refused = try await eventually("a", "secret-a", 401)
            #expect(refused == 401)
            // The provider goes down: the last good keys keep serving.
            await server.stop()
            _ = try answer("c", "secret-c")  // asks for a refetch, which fails
            pause(0.3)
            #expect(try answer("b", "secret-b").status == 200)
        }
        await server.stop()
    }

    /// An https provider: its certificate is checked against `jwks_ca_file` (a private CA) and
    /// its name against the URL's host; a certificate from another CA gets no keys in.
    @Test(arguments: [true, false]) func httpsWithAPrivateCA(trusted: Bool) async throws {
        let server = try await JWKSServer(Self.jwks([("a", "secret-a")]), tls: true)
        let ca = FileManager.default.temporaryDirectory.appendingPathComponent("moongate-ca-\(UUID().uuidString).pem").path
        try (trusted ? TestCertificates.ca : TestCertificates.otherCA).write(toFile: ca, atomically: true, encoding: .utf8)
        defer { try? FileManager.default.removeItem(atPath: ca) }
        let config = Self.config(jwksPort: server.port, url: "https://localhost:\(server.port)/jwks", ca: ca)
        try await withGateway(config, workers: 1, scripts: ["auth.lua": Self.policy]) { gw in
            let answer = try gw.client().request(
                "GET", "/", headers: [("Authorization", "Bearer " + Self.token(kid: "a", secret: "secret-a"))])
            if trusted {
                #expect(answer.status == 200)
            } else {
                #expect(answer.status == 401 && answer.text == "unknown_kid")
            }
        }
        await server.stop()
    }

    @Test func aCAFileNeedsHTTPS() throws {
        #expect(throws: (any Error).self) {
            try ConfigLoaderShim.parse(
                """
                listeners: [ { address: "127.0.0.1:8080" } ]
                upstreams: { app: { targets: [ "127.0.0.1:9" ] } }
                routes: [ { match: { path_prefix: / }, upstream: app } ]
                keysets: { idp: { algorithms: [RS256], jwks_url: "http://id.example.com/jwks", jwks_ca_file: ca.pem } }
                """)
        }
        try ConfigLoaderShim.parse(
            """
            listeners: [ { address: "127.0.0.1:8080" } ]
            upstreams: { app: { targets: [ "127.0.0.1:9" ] } }
            routes: [ { match: { path_prefix: / }, upstream: app } ]
            keysets: { idp: { algorithms: [RS256], jwks_url: "https://id.example.com/jwks" } }
            """)
    }
}

import Config

enum ConfigLoaderShim {
    static func parse(_ text: String) throws { _ = try ConfigLoader.parse(text, file: "g.yaml") }
}
