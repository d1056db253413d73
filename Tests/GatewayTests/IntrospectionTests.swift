import Foundation
import Testing

/// `oauth2.introspect` against a real local introspection endpoint (RFC 7662): client
/// credentials and the form body, active and inactive answers and their caching, and every
/// way the endpoint can fail, reported as reasons without blocking or hanging.
@Suite(.serialized) struct IntrospectionTests {
    static func config(port: Int, https ca: String? = nil) -> String {
        """
        listeners:
          - name: test
            address: 127.0.0.1:@PORT@
        introspection:
          idp:
            url: \(ca == nil ? "http://127.0.0.1" : "https://localhost"):\(port)/oauth2/introspect
            \(ca.map { "ca_file: \"\($0)\"" } ?? "")
            client_id: "gate way"
            client_secret: "s3cr:t"
            timeout: 200ms
            negative_cache: 1s
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
          local answer, reason = oauth2.introspect((request.header("Authorization") or ""):match("^Bearer (.+)$"), "idp")
          if not answer then request.respond(401, reason) end
          request.set_header("X-User", answer.sub)
          request.set_header("X-Scope", answer.scope)
        end }
        """

    /// Answers like an identity provider: checks the client's credentials, then looks the
    /// form's token up.
    static func provider(_ request: TestHTTPServer.Request) -> TestHTTPServer.Answer {
        // Basic base64("gate+way:s3cr%3At"): both parts form-encoded first (RFC 6749 2.3.1).
        let expected = "Basic " + Data("gate%20way:s3cr%3At".utf8).base64EncodedString()
        guard request.method == "POST", request.uri == "/oauth2/introspect", request.header("Authorization") == expected,
            request.header("Content-Type") == "application/x-www-form-urlencoded"
        else { return .init(status: 401, body: #"{"error":"invalid_client"}"#) }
        let form = String(decoding: request.body, as: UTF8.self)
        let exp = Int(Date().timeIntervalSince1970) + 3600
        switch form {
        case "token=good%2Ftoken&token_type_hint=access_token":
            return .init(body: #"{"active":true,"sub":"ann","scope":"read write","exp":\#(exp)}"#)
        case "token=expired&token_type_hint=access_token":
            return .init(body: #"{"active":true,"sub":"old","exp":1000}"#)
        case "token=slow&token_type_hint=access_token":
            return .init(body: #"{"active":true,"sub":"late"}"#, delay: .seconds(2))
        case "token=garbage&token_type_hint=access_token":
            return .init(body: "not json")
        default:
            return .init(body: #"{"active":false}"#)
        }
    }

    static func ask(_ client: RawClient, _ token: String) throws -> RawClient.Response {
        try client.request("GET", "/", headers: [("Authorization", "Bearer " + token)])
    }

    @Test func asksWithClientCredentialsAndCachesAnswers() async throws {
        let idp = try await TestHTTPServer(Self.provider)
        try await withGateway(Self.config(port: idp.port), workers: 1, scripts: ["auth.lua": Self.policy]) { gw in
            let client = try gw.client()
            func ask(_ token: String) throws -> RawClient.Response { try Self.ask(client, token) }
            let first = try ask("good/token")
            #expect(first.status == 200)
            #expect(first.echoed("X-User") == ["ann"] && first.echoed("X-Scope") == ["read write"])
            #expect(idp.requests.count == 1)
            // Active: kept until its exp; the endpoint is not asked again.
            for _ in 0..<5 { #expect(try ask("good/token").status == 200) }
            #expect(idp.requests.count == 1)
            // Inactive, and active with an exp in the past: refused, and kept briefly.
            #expect(try ask("revoked").text == "inactive")
            #expect(try ask("revoked").text == "inactive")
            #expect(try ask("expired").text == "inactive")
            #expect(idp.requests.count == 3)
            pause(1.1)
            #expect(try ask("revoked").text == "inactive")
            #expect(idp.requests.count == 4, "the negative answer expired after negative_cache")
            // An answer that is not a JSON object.
            #expect(try ask("garbage").text == "bad_response")
        }
        await idp.stop()
    }

    @Test func overHTTPS() async throws {
        let idp = try await TestHTTPServer(tls: (TestCertificates.server, TestCertificates.serverKey), Self.provider)
        let ca = FileManager.default.temporaryDirectory.appendingPathComponent("moongate-ca-\(UUID().uuidString).pem").path
        try TestCertificates.ca.write(toFile: ca, atomically: true, encoding: .utf8)
        defer { try? FileManager.default.removeItem(atPath: ca) }
        try await withGateway(Self.config(port: idp.port, https: ca), workers: 1, scripts: ["auth.lua": Self.policy]) { gw in
            let answer = try Self.ask(try gw.client(), "good/token")
            #expect(answer.status == 200 && answer.echoed("X-User") == ["ann"])
        }
        await idp.stop()
    }

    @Test func failuresAreReasonsNotHangs() async throws {
        let idp = try await TestHTTPServer(Self.provider)
        try await withGateway(Self.config(port: idp.port), workers: 1, scripts: ["auth.lua": Self.policy]) { gw in
            let client = try gw.client()
            func ask(_ token: String) throws -> RawClient.Response { try Self.ask(client, token) }
            // Slower than the 200 ms timeout.
            let started = Date()
            #expect(try ask("slow").text == "timeout")
            #expect(Date().timeIntervalSince(started) < 1)
            // Wrong client credentials: the endpoint's 401 is a bad response, not "inactive".
            idp.answer { _ in .init(status: 401, body: #"{"error":"invalid_client"}"#) }
            #expect(try ask("good/token").text == "bad_response")
            #expect(try ask("").text == "missing")
            // The endpoint down.
            await idp.stop()
            #expect(try ask("good/token").text == "unavailable")
            // Meanwhile other requests are served (nothing blocked the loop).
            #expect(try ask("x").status == 401)
        }
    }
}
