import Foundation
import Harness
import TestSupport
import Testing

/// `upstreams.X.tls`: the gateway speaks TLS to a real HTTPS origin (Python's `ssl`), verifies
/// its certificate against `ca_file` for `sni` (or the target's host), keeps connections alive
/// in the pool and resumes sessions on new ones; a certificate that does not verify fails the
/// try with `502` and a log line saying why.
@Suite struct UpstreamTLSTests {
    static func config(port: Int, tls: String, target: String = "127.0.0.1") -> String {
        """
        listeners:
          - name: public
            address: 127.0.0.1:@PORT@
        upstreams:
          origin:
            targets: [ "\(target):\(port)" ]
            retries: 0
            tls: \(tls)
        routes:
          - name: all
            match: { path_prefix: / }
            upstream: origin
        """
    }

    static func json(_ response: RawClient.Response) -> [String: Any] {
        (try? JSONSerialization.jsonObject(with: Data(response.body))) as? [String: Any] ?? [:]
    }

    @Test func theOriginsCertificateIsVerifiedConnectionsAreKeptAndSessionsResume() async throws {
        let certs = try MadeCertificates()
        try certs.makeCA("ca")
        try certs.make("origin", subject: "api.internal", altNames: ["api.internal"], signedBy: "ca")
        let origin = try TLSOrigin(cert: certs.path + "/origin.pem", key: certs.path + "/origin.key")
        let yaml = Self.config(port: origin.port, tls: "{ sni: api.internal, ca_file: \(certs.path)/ca.pem }")
        try await withGateway(yaml, workers: 1) { gw in
            let client = try gw.client()
            let first = try client.request("GET", "/one")
            #expect(first.status == 200, "\(String(decoding: first.body, as: UTF8.self))")
            let a = Self.json(first)
            #expect(a["path"] as? String == "/one")
            #expect(a["sni"] as? String == "api.internal")
            #expect(a["reused"] as? Bool == false)
            // Kept alive: the next request goes on the same TLS connection.
            let second = Self.json(try client.request("GET", "/two"))
            #expect(second["connection"] as? Int == a["connection"] as? Int)
            // The origin closes it: the next connection resumes the session.
            #expect(try client.request("GET", "/close").status == 200)
            let third = Self.json(try client.request("GET", "/three"))
            #expect(third["connection"] as? Int != a["connection"] as? Int)
            #expect(third["reused"] as? Bool == true, "\(third)")
        }
    }

    @Test func aCertificateThatDoesNotVerifyIs502WithTheReasonLogged() async throws {
        let certs = try MadeCertificates()
        try certs.makeCA("ca")
        try certs.makeCA("other")
        try certs.make("origin", subject: "api.internal", altNames: ["api.internal"], signedBy: "ca")
        let origin = try TLSOrigin(cert: certs.path + "/origin.pem", key: certs.path + "/origin.key")
        let cases: [(tls: String, reason: String)] = [
            // Another CA.
            ("{ sni: api.internal, ca_file: \(certs.path)/other.pem }", "unable to get local issuer certificate"),
            // The right CA, the wrong name.
            ("{ sni: billing.internal, ca_file: \(certs.path)/ca.pem }", "hostname mismatch"),
            // No name: the target's IP address is checked, and the certificate has none.
            ("{ ca_file: \(certs.path)/ca.pem }", "IP address mismatch"),
            // The system's roots do not know a private CA.
            ("true", "unable to get local issuer certificate"),
        ]
        for (tls, reason) in cases {
            let logs = LogStore()
            try await withGateway(Self.config(port: origin.port, tls: tls), workers: 1, logger: logs.logger()) { gw in
                let response = try gw.client().request("GET", "/x")
                #expect(response.status == 502, "\(tls)")
                #expect(String(decoding: response.body, as: UTF8.self).contains("\"error\":\"upstream TLS handshake failed\""), "\(tls)")
                // Logged once, not once per request.
                #expect(try gw.client().request("GET", "/y").status == 502)
                let lines = logs.all.filter { $0.message == "upstream TLS handshake failed" }
                #expect(lines.count == 1, "\(lines)")
                #expect(lines.first?.level == .warning)
                #expect(lines.first?.metadata["error"]?.contains(reason) == true, "\(tls): \(lines)")
                #expect(lines.first?.metadata["target"] == "127.0.0.1:\(origin.port)", "\(lines)")
            }
        }
        // `verify: false` takes any certificate (tests only).
        try await withGateway(Self.config(port: origin.port, tls: "{ verify: false }"), workers: 1) { gw in
            let status = try gw.client().request("GET", "/x").status
            #expect(status == 200)
        }
    }

    @Test func aClientCertificateIsShownToAnOriginThatAsks() async throws {
        let certs = try MadeCertificates()
        try certs.makeCA("ca")
        try certs.make("origin", subject: "api.internal", altNames: ["api.internal"], signedBy: "ca")
        try certs.make("gateway", subject: "gateway.internal", altNames: ["gateway.internal"], signedBy: "ca")
        let origin = try TLSOrigin(cert: certs.path + "/origin.pem", key: certs.path + "/origin.key", clientCA: certs.path + "/ca.pem")
        let without = Self.config(port: origin.port, tls: "{ sni: api.internal, ca_file: \(certs.path)/ca.pem }")
        let with = Self.config(
            port: origin.port, tls: "{ sni: api.internal, ca_file: \(certs.path)/ca.pem, cert: \(certs.path)/gateway.pem, key: \(certs.path)/gateway.key }")
        try await withGateway(with, workers: 1) { gw in
            let response = try gw.client().request("GET", "/x")
            #expect(response.status == 200)
            #expect(Self.json(response)["client"] as? String == "gateway.internal")
            // Without one the origin refuses the handshake (TLS 1.3 says so after it: the
            // request fails either way).
            #expect(try await gw.rewrite(without).errors.isEmpty)
            #expect(try gw.client().request("GET", "/x").status == 502)
        }
    }

    @Test func badTLSSettingsAreConfigErrorsNamingTheFile() async throws {
        let certs = try MadeCertificates()
        try certs.make("gateway", subject: "gateway.internal", altNames: ["gateway.internal"])
        try await withGateway(Self.config(port: 9, tls: "{ verify: false }"), workers: 1) { gw in
            let missing = try await gw.rewrite(Self.config(port: 9, tls: "{ ca_file: \(certs.path)/missing.pem }"))
            #expect(missing.errors.first?.contains("upstreams.origin.tls: \(certs.path)/missing.pem: cannot load the CA certificates") == true, "\(missing.errors)")
            let half = try await gw.rewrite(Self.config(port: 9, tls: "{ cert: \(certs.path)/gateway.pem }"))
            #expect(half.errors.first?.contains("upstreams.origin.tls.key: a client certificate needs both") == true, "\(half.errors)")
            let wrongKey = try await gw.rewrite(Self.config(port: 9, tls: "{ cert: \(certs.path)/gateway.pem, key: \(certs.path)/gateway.pem }"))
            #expect(wrongKey.errors.first?.contains("\(certs.path)/gateway.pem: not a PEM private key") == true, "\(wrongKey.errors)")
            let version = try await gw.rewrite(Self.config(port: 9, tls: "{ min_version: \"1.0\" }"))
            #expect(version.errors.first?.contains("upstreams.origin.tls.min_version: expected") == true, "\(version.errors)")
        }
    }

    /// Active health checks of a TLS upstream go over TLS, with its name and CA: a healthy
    /// origin stays in rotation (probed in plaintext, it would be marked down).
    @Test func healthChecksOfATLSUpstreamSpeakTLS() async throws {
        let certs = try MadeCertificates()
        try certs.makeCA("ca")
        try certs.make("origin", subject: "api.internal", altNames: ["api.internal"], signedBy: "ca")
        let origin = try TLSOrigin(cert: certs.path + "/origin.pem", key: certs.path + "/origin.key")
        let tls = "{ sni: api.internal, ca_file: \(certs.path)/ca.pem }\n    health_check: { path: /healthz, interval: 100ms, timeout: 2s, healthy: 1, unhealthy: 1, expect: EXPECT }"
        try await withGateway(Self.config(port: origin.port, tls: tls.replacingOccurrences(of: "EXPECT", with: "200")), workers: 1) { gw in
            try await Task.sleep(for: .milliseconds(800))
            let response = try gw.client().request("GET", "/x")
            #expect(response.status == 200, "\(String(decoding: response.body, as: UTF8.self))")
        }
        // The probes read the origin's status: one it does not expect takes the target out.
        try await withGateway(Self.config(port: origin.port, tls: tls.replacingOccurrences(of: "EXPECT", with: "204")), workers: 1) { gw in
            var status = 0
            for _ in 0..<50 {
                try await Task.sleep(for: .milliseconds(100))
                status = try gw.client().request("GET", "/x").status
                if status == 503 { break }
            }
            #expect(status == 503)
        }
    }
}
