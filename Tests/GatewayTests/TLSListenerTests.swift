import Foundation
import TestSupport
import Testing

/// A listener with `tls:` terminates TLS: real clients (`curl --cacert`) get the certificate
/// SNI picks and are proxied as on a plaintext listener; a certificate that does not load is
/// a config error at its entry, and a reload that breaks one keeps the last good generation.
@Suite struct TLSListenerTests {
    static func config(_ certs: MadeCertificates, minVersion: String = "1.2", extra: String = "") -> String {
        """
        listeners:
          - name: public
            address: 127.0.0.1:@PORT@
            tls:
              \(extra)
              min_version: "\(minVersion)"
              certificates:
                - { cert: \(certs.path)/api.pem, key: \(certs.path)/api.key }
                - { cert: \(certs.path)/wildcard.pem, key: \(certs.path)/wildcard.key }
        upstreams:
          echo:
            targets: [ "@ECHO@" ]
        routes:
          - name: all
            match: { path_prefix: / }
            upstream: echo
        """
    }

    /// curl against the gateway as `host`; status, the certificate's subject line, and the body.
    static func curl(_ port: Int, host: String, roots: String, path: String = "/hello", extra: [String] = []) throws -> (Int32, String) {
        try runTool(
            "/usr/bin/curl",
            ["-sS", "-v", "--max-time", "10", "--cacert", roots, "--resolve", "\(host):\(port):127.0.0.1", "https://\(host):\(port)\(path)"] + extra)
    }

    @Test func curlIsServedWithTheCertificateForTheNameItAsks() async throws {
        let certs = try MadeCertificates()
        try certs.make("api", subject: "api.example.com", altNames: ["api.example.com"])
        try certs.make("wildcard", subject: "wildcard.example.com", altNames: ["*.example.com"])
        let roots = try certs.roots(["api", "wildcard"])
        try await withGateway(Self.config(certs)) { gw in
        let (status, api) = try Self.curl(gw.port, host: "api.example.com", roots: roots, path: "/hello?x=1")
        #expect(status == 0, "\(api)")
        #expect(api.contains("subject: CN=api.example.com"), "\(api)")
        #expect(api.contains("SSL connection using TLSv1.3"), "\(api)")
        // curl offers h2 first, and the listener takes it (HTTP2Tests); an HTTP/1.1 client gets that.
        #expect(api.contains("ALPN: server accepted h2"), "\(api)")
        let (_, http1) = try Self.curl(gw.port, host: "api.example.com", roots: roots, extra: ["--http1.1"])
        #expect(http1.contains("ALPN: server accepted http/1.1") && http1.contains("< HTTP/1.1 200"), "\(http1)")
        #expect(api.contains("\"uri\":\"/hello?x=1\""), "\(api)")  // the echo upstream's answer
        #expect(api.contains("[\"X-Forwarded-Proto\",\"https\"]"), "\(api)")
        let (_, www) = try Self.curl(gw.port, host: "www.example.com", roots: roots)
        #expect(www.contains("subject: CN=wildcard.example.com"), "\(www)")
        // Kept alive: two requests on one TLS connection.
        let (_, twice) = try Self.curl(gw.port, host: "api.example.com", roots: roots, extra: ["https://api.example.com:\(gw.port)/again"])
        #expect(twice.contains("Re-using existing connection") || twice.contains("Reusing existing"), "\(twice)")
        #expect(twice.components(separatedBy: "HTTP/2 200").count == 3, "\(twice)")
        // TLS 1.1 is not offered.
        let (old, oldOutput) = try Self.curl(gw.port, host: "api.example.com", roots: roots, extra: ["--tlsv1.1", "--tls-max", "1.1"])
        #expect(old != 0, "\(oldOutput)")
        // Plain HTTP on the TLS port gets no answer in clear.
        let (_, plain) = try runTool("/usr/bin/curl", ["-sS", "--max-time", "5", "http://127.0.0.1:\(gw.port)/hello"])
        #expect(!plain.contains("\"uri\""), "\(plain)")
        // openssl s_client: the certificate per name asked for, the first for a name none has.
        for (name, subject) in [("api.example.com", "CN = api.example.com"), ("www.example.com", "CN = wildcard.example.com"), ("unknown.test", "CN = api.example.com")] {
            let (_, output) = try runTool("/usr/bin/openssl", ["s_client", "-connect", "127.0.0.1:\(gw.port)", "-servername", name, "-brief"], stdin: "/dev/null")
            #expect(output.contains("Peer certificate: \(subject)"), "\(name): \(output)")
        }
        // The listener still serves after all that.
        #expect(try Self.curl(gw.port, host: "api.example.com", roots: roots).0 == 0)
        }
    }

    @Test func aCertificateThatDoesNotLoadIsAConfigErrorAndAReloadKeepsTheLastGood() async throws {
        let certs = try MadeCertificates()
        try certs.make("api", subject: "api.example.com", altNames: ["api.example.com"])
        try certs.make("wildcard", subject: "wildcard.example.com", altNames: ["*.example.com"])
        let roots = try certs.roots(["api", "wildcard"])
        try await withGateway(Self.config(certs)) { gw in
        // The wildcard's key swapped for another: refused, naming the file and the entry.
        try certs.make("other", subject: "other.test", altNames: ["other.test"])
        let broken = Self.config(certs).replacingOccurrences(of: "\(certs.path)/wildcard.key", with: "\(certs.path)/other.key")
        let result = try await gw.rewrite(broken)
        #expect(result.errors.count == 1)
        #expect(result.errors.first?.contains("listeners[0].tls.certificates[1]: \(certs.path)/other.key: the key does not match the certificate") == true, "\(result.errors)")
        #expect(try Self.curl(gw.port, host: "www.example.com", roots: roots).1.contains("subject: CN=wildcard.example.com"))
        // A bad version is refused with the values allowed.
        let version = try await gw.rewrite(Self.config(certs, minVersion: "1.1"))
        #expect(version.errors.first?.contains("listeners[0].tls.min_version: expected \"1.2\" or \"1.3\"") == true, "\(version.errors)")
        }
    }

    /// `openssl s_client` asking for `api.example.com` and sending one request, saving its
    /// session to `save` or offering the one in `offer`; its output.
    static func sClient(_ port: Int, roots: String, version: String, save: String? = nil, offer: String? = nil) throws -> String {
        let request = NSTemporaryDirectory() + "moongate-request-\(UUID().uuidString)"
        try "GET /hello HTTP/1.1\r\nHost: api.example.com\r\nConnection: close\r\n\r\n".write(toFile: request, atomically: true, encoding: .utf8)
        defer { try? FileManager.default.removeItem(atPath: request) }
        var arguments = ["s_client", "-connect", "127.0.0.1:\(port)", "-servername", "api.example.com", "-CAfile", roots, "-verify_return_error", "-ign_eof", version]
        if let save { arguments += ["-sess_out", save] }
        if let offer { arguments += ["-sess_in", offer] }
        return try runTool("/usr/bin/openssl", arguments, stdin: request).1
    }

    /// Sessions resume from tickets, on any worker and across a reload (which builds new
    /// contexts); `session_tickets: false` issues none, so a TLS 1.2 session does not survive a reload.
    @Test(arguments: ["-tls1_2", "-tls1_3"]) func sessionsResumeAcrossReloads(_ version: String) async throws {
        let certs = try MadeCertificates()
        try certs.make("api", subject: "api.example.com", altNames: ["api.example.com"])
        try certs.make("wildcard", subject: "wildcard.example.com", altNames: ["*.example.com"])
        let roots = try certs.roots(["api", "wildcard"])
        let session = certs.path + "/session.pem"
        try await withGateway(Self.config(certs)) { gw in
            let first = try Self.sClient(gw.port, roots: roots, version: version, save: session)
            #expect(first.contains("New, TLSv1."), "\(first)")
            #expect(first.contains("\"uri\":\"/hello\""), "\(first)")
            #expect(try await gw.rewrite(Self.config(certs, extra: "handshake_timeout: 9s")).errors.isEmpty)
            let resumed = try Self.sClient(gw.port, roots: roots, version: version, offer: session)
            #expect(resumed.contains("Reused, TLSv1."), "\(resumed)")
            #expect(resumed.contains("\"uri\":\"/hello\""), "\(resumed)")

            #expect(try await gw.rewrite(Self.config(certs, extra: "session_tickets: false")).errors.isEmpty)
            let untold = try Self.sClient(gw.port, roots: roots, version: version, save: session)
            #expect(untold.contains("New, TLSv1."), "\(untold)")
            if version == "-tls1_2" {
                #expect(!untold.contains("TLS session ticket:"), "\(untold)")
                #expect(try await gw.rewrite(Self.config(certs, extra: "session_tickets: false\n      handshake_timeout: 8s")).errors.isEmpty)
                let forgotten = try Self.sClient(gw.port, roots: roots, version: version, offer: session)
                #expect(forgotten.contains("New, TLSv1."), "\(forgotten)")
            }
        }
    }

    @Test func aStalledHandshakeIsClosedAndHandshakesInProgressAreBounded() async throws {
        let certs = try MadeCertificates()
        try certs.make("api", subject: "api.example.com", altNames: ["api.example.com"])
        try certs.make("wildcard", subject: "wildcard.example.com", altNames: ["*.example.com"])
        let roots = try certs.roots(["api", "wildcard"])
        // An explicit free port, not port 0: a listener bound to port 0 with SO_REUSEPORT may be
        // given a port another gateway of this test process listens on, and share its clients
        // (suspected from a full-suite run where these clients were closed by someone else).
        // A handshake timeout far longer than the test's own pauses: under a loaded suite a
        // task's sleep can resume seconds late, and the two silent clients must still be
        // handshaking (not timed out) when the third comes.
        let yaml = Self.config(certs, extra: "handshake_timeout: 8s\n      max_handshakes: 2")
            .replacingOccurrences(of: "@PORT@", with: String(try freeLoopbackPort()))
        try await withGateway(yaml, workers: 1) { gw in
            // Two clients connect and say nothing: their handshakes stay in progress.
            let first = try gw.client(timeout: 20)
            let second = try gw.client(timeout: 20)
            let opened = Date()
            try await Task.sleep(for: .milliseconds(50))
            // A third is over the bound: closed at once, long before the timeout.
            let third = try gw.client(timeout: 20)
            let start = Date()
            #expect(third.isClosedByPeer())
            if Date().timeIntervalSince(opened) < 7 {
                #expect(Date().timeIntervalSince(start) < 2, "closed at once, not at the 8 s timeout")
            }
            // The silent two are closed when their handshake times out.
            #expect(first.isClosedByPeer())
            #expect(second.isClosedByPeer())
            #expect(Date().timeIntervalSince(opened) > 7, "the silent clients had their handshake timeout")
            // Room again: a real client is served.
            #expect(try Self.curl(gw.port, host: "api.example.com", roots: roots).0 == 0)
        }
    }

    /// mTLS: `client_ca` with `client_auth: required` refuses a handshake without a certificate
    /// from that CA; `optional` serves it without one. `request.tls()` tells a policy the
    /// protocol, cipher, name asked for and the verified client certificate.
    @Test(arguments: ["required", "optional"]) func clientCertificatesAreVerifiedAndShownToPolicies(_ auth: String) async throws {
        let certs = try MadeCertificates()
        try certs.make("api", subject: "api.example.com", altNames: ["api.example.com"])
        try certs.makeCA("clients-ca")
        let client = try certs.make("client", subject: "client-one", altNames: ["one.clients.example"], signedBy: "clients-ca")
        let stranger = try certs.make("stranger", subject: "stranger", altNames: [])
        let roots = try certs.roots(["api"])
        let yaml = """
            listeners:
              - name: public
                address: 127.0.0.1:@PORT@
                tls:
                  certificates: [ { cert: \(certs.path)/api.pem, key: \(certs.path)/api.key } ]
                  client_ca: \(certs.path)/clients-ca.pem
                  client_auth: \(auth)
            upstreams:
              echo:
                targets: [ "@ECHO@" ]
            routes:
              - name: who
                match: { path_prefix: / }
                upstream: echo
                policy: who.lua
            """
        let who = "return { access = function() request.respond(200, json.encode(request.tls() or {})) end }"
        try await withGateway(yaml, scripts: ["who.lua": who]) { gw in
            let (status, out) = try Self.curl(gw.port, host: "api.example.com", roots: roots, extra: ["--cert", client.cert, "--key", client.key])
            #expect(status == 0, "\(out)")
            let body = out.split(separator: "\n").last.map(String.init) ?? ""
            #expect(body.contains("\"subject\":\"CN=client-one\""), "\(body)")
            #expect(body.contains("\"names\":[\"one.clients.example\"]"), "\(body)")
            #expect(body.range(of: "\"fingerprint\":\"[0-9a-f]{64}\"", options: .regularExpression) != nil, "\(body)")
            #expect(body.contains("\"sni\":\"api.example.com\""), "\(body)")
            #expect(body.contains("\"protocol\":\"TLSv1.3\""), "\(body)")
            // A certificate from elsewhere is refused either way.
            let (strangerStatus, strangerOut) = try Self.curl(gw.port, host: "api.example.com", roots: roots, extra: ["--cert", stranger.cert, "--key", stranger.key])
            #expect(strangerStatus != 0, "\(strangerOut)")
            // No certificate: refused when required, served without `client` when optional.
            let (bareStatus, bareOut) = try Self.curl(gw.port, host: "api.example.com", roots: roots)
            if auth == "required" {
                #expect(bareStatus != 0 || !bareOut.contains("HTTP/1.1 200"), "\(bareOut)")
            } else {
                #expect(bareStatus == 0, "\(bareOut)")
                let bare = bareOut.split(separator: "\n").last.map(String.init) ?? ""
                #expect(!bare.contains("\"client\""), "\(bare)")
                #expect(bare.contains("\"protocol\":\"TLSv1.3\""), "\(bare)")
            }
        }
    }

    /// testssl.sh (Debian's) finds no weak protocol, no weak suite and no client-initiated
    /// renegotiation on a TLS listener.
    @Test func testsslFindsNoWeakProtocolOrSuite() async throws {
        let certs = try MadeCertificates()
        try certs.make("api", subject: "localhost", altNames: ["localhost"])
        try certs.make("wildcard", subject: "wildcard.example.com", altNames: ["*.example.com"])
        try await withGateway(Self.config(certs), workers: 1) { gw in
            let report = certs.path + "/testssl.json"
            let (_, output) = try runTool(
                "/usr/bin/testssl", ["--quiet", "--color", "0", "-p", "-s", "-R", "--jsonfile", report, "localhost:\(gw.port)"])
            let data = try Data(contentsOf: URL(fileURLWithPath: report))
            let entries = try #require(try JSONSerialization.jsonObject(with: data) as? [[String: Any]], "\(output)")
            var findings: [String: String] = [:]
            for entry in entries {
                if let id = entry["id"] as? String, let finding = entry["finding"] as? String { findings[id] = finding }
                let severity = entry["severity"] as? String ?? ""
                #expect(!["LOW", "MEDIUM", "HIGH", "CRITICAL"].contains(severity), "\(entry)")
            }
            for id in ["SSLv2", "SSLv3", "TLS1", "TLS1_1", "cipherlist_NULL", "cipherlist_aNULL", "cipherlist_EXPORT", "cipherlist_LOW", "cipherlist_3DES_IDEA", "cipherlist_AVERAGE"] {
                #expect(findings[id] == "not offered", "\(id): \(findings[id] ?? "missing")")
            }
            #expect(findings["TLS1_2"] == "offered")
            #expect(findings["TLS1_3"]?.hasPrefix("offered") == true)
            #expect(findings["secure_client_renego"] == "not vulnerable")
        }
    }
}
