import COpenSSL
import CTLS
import Foundation
import TLS
import TestSupport
import Testing

/// Certificates made by the `openssl` command for each test (real ECDSA P-256 keys), loaded
/// as a listener loads them, and handshakes between a client and the listener's contexts
/// through an in-memory BIO pair: SNI picks the certificate the client then verifies.
@Suite struct TLSCertificateTests {
    /// A folder of certificates whose `certificate` answers a listener's source.
    final class Folder {
        let certificates: MadeCertificates
        var path: String { certificates.path }
        init() throws { certificates = try MadeCertificates() }

        @discardableResult
        func certificate(_ name: String, subject: String, altNames: [String]) throws -> TLSCertificates.Source {
            let made = try certificates.make(name, subject: subject, altNames: altNames)
            return TLSCertificates.Source(cert: made.cert, key: made.key)
        }

        func roots(_ names: [String]) throws -> String { try certificates.roots(names) }
    }

    /// A handshake of a client asking for `serverName` against `certificates`; the common name
    /// of the certificate the client verified, or nil when the handshake failed.
    static func handshake(_ certificates: TLSCertificates, serverName: String?, roots: String, clientMax: Int32 = 0) -> String? {
        connect(certificates, serverName: serverName, roots: roots, clientMax: clientMax).name
    }

    /// What a client got from a handshake: the verified certificate's common name (nil: the
    /// handshake failed), whether it resumed the session it offered, and the session to offer
    /// next time (the caller frees it).
    struct Connection {
        var name: String?
        var resumed = false
        var session: OpaquePointer?
    }

    static func connect(_ certificates: TLSCertificates, serverName: String?, roots: String, clientMax: Int32 = 0, offering session: OpaquePointer? = nil) -> Connection {
        var error = [CChar](repeating: 0, count: 256)
        guard let clientContext = mg_tls_client_context(roots, 12, &error, error.count) else { return Connection() }
        defer { SSL_CTX_free(clientContext) }
        if clientMax != 0 { _ = SSL_CTX_ctrl(clientContext, SSL_CTRL_SET_MAX_PROTO_VERSION, Int(clientMax), nil) }
        guard let server = SSL_new(certificates.defaultContext), let client = SSL_new(clientContext) else { return Connection() }
        defer {
            // Closed cleanly: OpenSSL marks the session of a connection freed without a
            // shutdown as not resumable.
            SSL_set_shutdown(client, SSL_SENT_SHUTDOWN | SSL_RECEIVED_SHUTDOWN)
            SSL_set_shutdown(server, SSL_SENT_SHUTDOWN | SSL_RECEIVED_SHUTDOWN)
            SSL_free(server)
            SSL_free(client)
        }
        var serverBIO: OpaquePointer?
        var clientBIO: OpaquePointer?
        guard BIO_new_bio_pair(&serverBIO, 0, &clientBIO, 0) == 1 else { return Connection() }
        SSL_set_bio(server, serverBIO, serverBIO)
        SSL_set_bio(client, clientBIO, clientBIO)
        SSL_set_accept_state(server)
        SSL_set_connect_state(client)
        if let serverName { guard mg_tls_set_server_name(client, serverName) == 1 else { return Connection() } }
        if let session { _ = SSL_set_session(client, session) }
        var serverDone = false, clientDone = false
        for _ in 0..<20 where !(serverDone && clientDone) {
            if !clientDone {
                let r = SSL_do_handshake(client)
                if r == 1 { clientDone = true } else if SSL_get_error(client, r) != SSL_ERROR_WANT_READ { return Connection() }
            }
            if !serverDone {
                let r = SSL_do_handshake(server)
                if r == 1 { serverDone = true } else if SSL_get_error(server, r) != SSL_ERROR_WANT_READ { return Connection() }
            }
        }
        guard serverDone, clientDone, SSL_get_verify_result(client) == X509_V_OK, let peer = SSL_get1_peer_certificate(client) else { return Connection() }
        defer { X509_free(peer) }
        // TLS 1.3 tickets come after the handshake: a read takes them in.
        var byte: UInt8 = 0
        _ = SSL_read(client, &byte, 1)
        var name = [CChar](repeating: 0, count: 256)
        _ = X509_NAME_get_text_by_NID(X509_get_subject_name(peer), NID_commonName, &name, Int32(name.count))
        return Connection(
            name: String(decoding: name.prefix { $0 != 0 }.map { UInt8(bitPattern: $0) }, as: UTF8.self),
            resumed: SSL_session_reused(client) == 1,
            session: SSL_get1_session(client))
    }

    @Test(arguments: [TLS1_2_VERSION, TLS1_3_VERSION])
    func sessionsResumeFromTicketsAcrossReloadsUntilTheirKeyIsWiped(version: Int32) throws {
        let folder = try Folder()
        let source = try folder.certificate("api", subject: "api.example.com", altNames: ["api.example.com"])
        let roots = try folder.roots(["api"])
        let keys = TLSTicketKeys(rotation: 3600)
        let first = try TLSCertificates([source], tickets: keys)
        let fresh = Self.connect(first, serverName: "api.example.com", roots: roots, clientMax: version)
        #expect(fresh.name == "api.example.com" && !fresh.resumed)
        guard let ticket = fresh.session else { Issue.record("no session"); return }
        defer { SSL_SESSION_free(ticket) }
        #expect(SSL_SESSION_has_ticket(ticket) == 1)
        #expect(SSL_SESSION_get_ticket_lifetime_hint(ticket) == 3600)

        // A reload builds new contexts: the ticket still resumes, with the same keys.
        let reloaded = try TLSCertificates([source], tickets: keys)
        let again = Self.connect(reloaded, serverName: "api.example.com", roots: roots, clientMax: version, offering: ticket)
        #expect(again.name == "api.example.com" && again.resumed)

        // Each resumption brings a new ticket (a session the client did not offer), so a
        // client that uses tickets once (TLS 1.3; wrk) resumes every time from the last one.
        #expect(again.session != nil && again.session != ticket, "no new ticket on resumption")
        var latest = again.session
        for _ in 0..<3 {
            let next = Self.connect(reloaded, serverName: "api.example.com", roots: roots, clientMax: version, offering: latest)
            #expect(next.resumed)
            #expect(next.session != nil && next.session != latest, "no new ticket on resumption")
            if let latest { SSL_SESSION_free(latest) }
            latest = next.session
        }
        if let latest { SSL_SESSION_free(latest) }

        // Another store (another process) does not open it: a full handshake.
        let stranger = try TLSCertificates([source], tickets: TLSTicketKeys(rotation: 3600))
        let elsewhere = Self.connect(stranger, serverName: "api.example.com", roots: roots, clientMax: version, offering: ticket)
        #expect(elsewhere.name == "api.example.com" && !elsewhere.resumed)
        if let session = elsewhere.session { SSL_SESSION_free(session) }

        // The next period: the previous key still opens the ticket (and renews it) ...
        keys.advance(seconds: 3600)
        let renewed = Self.connect(reloaded, serverName: "api.example.com", roots: roots, clientMax: version, offering: ticket)
        #expect(renewed.resumed)
        guard let renewedTicket = renewed.session else { Issue.record("no renewed session"); return }
        defer { SSL_SESSION_free(renewedTicket) }
        // ... two periods on, its key is wiped: a full handshake, while the renewed ticket resumes.
        keys.advance(seconds: 3600)
        let expired = Self.connect(reloaded, serverName: "api.example.com", roots: roots, clientMax: version, offering: ticket)
        #expect(expired.name == "api.example.com" && !expired.resumed)
        if let session = expired.session { SSL_SESSION_free(session) }
        let stillGood = Self.connect(reloaded, serverName: "api.example.com", roots: roots, clientMax: version, offering: renewedTicket)
        #expect(stillGood.resumed)
        if let session = stillGood.session { SSL_SESSION_free(session) }

        // Tickets off: none is issued.
        let noTickets = try TLSCertificates([source], tickets: nil)
        let plain = Self.connect(noTickets, serverName: "api.example.com", roots: roots, clientMax: version)
        #expect(plain.name == "api.example.com")
        if let session = plain.session {
            if version == TLS1_2_VERSION { #expect(SSL_SESSION_has_ticket(session) == 0) }
            SSL_SESSION_free(session)
        }
    }

    @Test func theNameTheClientAsksForPicksTheCertificate() throws {
        let folder = try Folder()
        let sources = [
            try folder.certificate("api", subject: "api.example.com", altNames: ["api.example.com", "API2.example.com"]),
            try folder.certificate("wildcard", subject: "wildcard.example.com", altNames: ["*.example.com"]),
            try folder.certificate("legacy", subject: "legacy.test", altNames: []),
        ]
        let certificates = try TLSCertificates(sources)
        #expect(certificates.names == [["api.example.com", "api2.example.com"], ["*.example.com"], ["legacy.test"]])
        #expect(certificates.index(serverName: "api.example.com") == 0)
        #expect(certificates.index(serverName: "API2.Example.com") == 0)
        #expect(certificates.index(serverName: "www.example.com") == 1)  // exact before wildcard, wildcard before default
        #expect(certificates.index(serverName: "a.b.example.com") == 0)  // a wildcard covers one label
        #expect(certificates.index(serverName: "example.com") == 0)
        #expect(certificates.index(serverName: "legacy.test") == 2)  // no subjectAltName: the common name
        #expect(certificates.index(serverName: nil) == 0)
        #expect(certificates.secondsLeft.allSatisfy { $0 > 86_400 && $0 <= 2 * 86_400 })

        // Real handshakes: the client verifies the certificate SNI chose for the name it asked for.
        let roots = try folder.roots(["api", "wildcard", "legacy"])
        #expect(Self.handshake(certificates, serverName: "api.example.com", roots: roots) == "api.example.com")
        #expect(Self.handshake(certificates, serverName: "www.example.com", roots: roots) == "wildcard.example.com")
        #expect(Self.handshake(certificates, serverName: "legacy.test", roots: roots) == "legacy.test")
        // A name no certificate has gets the default, which the client then refuses to trust for it.
        #expect(Self.handshake(certificates, serverName: "other.test", roots: roots) == nil)
    }

    @Test func aMinimumOfTLS13RefusesATLS12Client() throws {
        let folder = try Folder()
        let source = try folder.certificate("api", subject: "api.example.com", altNames: ["api.example.com"])
        let roots = try folder.roots(["api"])
        let modern = try TLSCertificates([source], minVersion: .tls13)
        #expect(Self.handshake(modern, serverName: "api.example.com", roots: roots) == "api.example.com")
        #expect(Self.handshake(modern, serverName: "api.example.com", roots: roots, clientMax: TLS1_2_VERSION) == nil)
        let either = try TLSCertificates([source])
        #expect(Self.handshake(either, serverName: "api.example.com", roots: roots, clientMax: TLS1_2_VERSION) == "api.example.com")
    }

    @Test func badFilesAreRefusedNamingTheFile() throws {
        let folder = try Folder()
        let api = try folder.certificate("api", subject: "api.example.com", altNames: ["api.example.com"])
        let other = try folder.certificate("other", subject: "other.test", altNames: ["other.test"])
        #expect(throws: TLSError.self) { try TLSCertificates([]) }
        do {
            _ = try TLSCertificates([TLSCertificates.Source(cert: api.cert, key: other.key)])
            Issue.record("a key that does not match its certificate was accepted")
        } catch {
            #expect(error.description.hasPrefix(other.key + ": the key does not match the certificate"), "\(error)")
        }
        do {
            _ = try TLSCertificates([api, TLSCertificates.Source(cert: folder.path + "/missing.pem", key: api.key)])
            Issue.record("a missing certificate was accepted")
        } catch {
            #expect(error.description.hasPrefix(folder.path + "/missing.pem: not a PEM certificate chain"), "\(error)")
        }
        try "not a key".write(toFile: folder.path + "/garbage.key", atomically: true, encoding: .utf8)
        do {
            _ = try TLSCertificates([TLSCertificates.Source(cert: api.cert, key: folder.path + "/garbage.key")])
            Issue.record("a garbage key was accepted")
        } catch {
            #expect(error.description.hasPrefix(folder.path + "/garbage.key: not a PEM private key"), "\(error)")
        }
    }
}
