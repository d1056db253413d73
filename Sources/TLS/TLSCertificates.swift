import CTLS

/// A listener's certificates, each an OpenSSL server context, chosen per handshake by the
/// name the client asks for (SNI): an exact name before a wildcard (`*.example.com` covers one
/// label, as RFC 6125 says), the first certificate listed when no name matches or none is sent.
///
/// Built off the event loops (it reads files); immutable afterwards, so every loop's
/// handshakes share it. A reload builds a new one: connections keep the one they started with.
public final class TLSCertificates: @unchecked Sendable {
    /// One certificate chain and its key, as configured.
    public struct Source: Sendable, Hashable {
        public var cert: String
        public var key: String
        public init(cert: String, key: String) {
            self.cert = cert
            self.key = key
        }
    }

    /// The lowest protocol version offered.
    public enum Version: Int, Sendable {
        case tls12 = 12
        case tls13 = 13
    }

    /// The contexts, in configuration order; the first is the default.
    let contexts: [OpaquePointer]
    /// The ticket keys the contexts use, kept as long as they are.
    private let tickets: TLSTicketKeys?
    /// Each context's names (lower case), as its certificate says them.
    public let names: [[String]]
    private let exact: [String: Int]
    /// Wildcard certificates by the domain they cover (`example.com` for `*.example.com`).
    private let wildcard: [String: Int]

    /// Clients' certificates, when the listener asks for them (mTLS).
    public struct ClientVerification: Sendable, Hashable {
        /// PEM file of the CAs that client certificates must chain to.
        public var caFile: String
        /// A handshake without a certificate is refused (else it goes on without one).
        public var required: Bool
        public init(caFile: String, required: Bool) {
            self.caFile = caFile
            self.required = required
        }
    }

    /// Loads each certificate and key; throws naming the file and OpenSSL's reason for the
    /// first that fails (nothing is kept then), with the index of its source.
    ///
    /// Sessions resume from tickets sealed with `tickets` (nil: no tickets, TLS 1.2 resumes
    /// from the session cache only), which the contexts keep alive.
    ///
    /// `http2`: ALPN offers `h2` as well as `http/1.1`.
    public init(
        _ sources: [Source], minVersion: Version = .tls12, clients: ClientVerification? = nil, tickets: TLSTicketKeys? = .process, http2: Bool = false
    ) throws(TLSError) {
        guard !sources.isEmpty else { throw TLSError("a TLS listener needs at least one certificate") }
        var contexts: [OpaquePointer] = []
        var names: [[String]] = []
        for (i, source) in sources.enumerated() {
            var error = [CChar](repeating: 0, count: 512)
            var ctx = mg_tls_server_context(source.cert, source.key, Int32(minVersion.rawValue), &error, error.count)
            if let loaded = ctx, let clients, mg_tls_verify_clients(loaded, clients.caFile, clients.required ? 1 : 0, &error, error.count) != 1 {
                SSL_CTX_free(loaded)
                ctx = nil
            }
            if let loaded = ctx {
                if let tickets {
                    if mg_tls_use_ticket_keys(loaded, tickets.store) != 1 {
                        SSL_CTX_free(loaded)
                        ctx = nil
                        error = Array("\(source.cert): cannot set the session ticket keys".utf8CString)
                    }
                } else {
                    mg_tls_disable_tickets(loaded)
                }
            }
            if let ctx { mg_tls_offer_h2(ctx, http2 ? 1 : 0) }
            guard let ctx else {
                for ctx in contexts { SSL_CTX_free(ctx) }
                throw TLSError(TLSError.text(error), source: i)
            }
            contexts.append(ctx)
            names.append(Self.certificateNames(ctx))
        }
        var exact: [String: Int] = [:]
        var wildcard: [String: Int] = [:]
        for (i, list) in names.enumerated() {
            for name in list {
                if name.hasPrefix("*.") {
                    let domain = String(name.dropFirst(2))
                    if wildcard[domain] == nil { wildcard[domain] = i }
                } else if exact[name] == nil {
                    exact[name] = i
                }
            }
        }
        self.contexts = contexts
        self.tickets = tickets
        self.names = names
        self.exact = exact
        self.wildcard = wildcard
        let chooser: @convention(c) (UnsafeMutableRawPointer?, UnsafePointer<CChar>?, Int) -> OpaquePointer? = { context, name, length in
            guard let context, let name else { return nil }
            let certificates = Unmanaged<TLSCertificates>.fromOpaque(context).takeUnretainedValue()
            let bytes = UnsafeRawBufferPointer(start: name, count: length)
            return certificates.contexts[certificates.index(serverName: String(decoding: bytes, as: UTF8.self))]
        }
        // The default context calls back into this object, which owns it: never freed before it.
        mg_tls_set_sni_chooser(contexts[0], chooser, Unmanaged.passUnretained(self).toOpaque())
    }

    deinit {
        for ctx in contexts { SSL_CTX_free(ctx) }
    }

    /// The context handshakes start with (the default certificate, and the SNI chooser).
    public var defaultContext: OpaquePointer { contexts[0] }

    /// The certificate for `serverName`: its index in the configured list.
    public func index(serverName: String?) -> Int {
        guard let serverName, !serverName.isEmpty else { return 0 }
        let name = serverName.lowercased()
        if let i = exact[name] { return i }
        if let dot = name.firstIndex(of: "."), let i = wildcard[String(name[name.index(after: dot)...])] { return i }
        return 0
    }

    /// Seconds until each certificate expires (negative: expired).
    public var secondsLeft: [Int] { contexts.map { Int(mg_tls_certificate_seconds_left($0)) } }

    private static func certificateNames(_ ctx: OpaquePointer) -> [String] {
        var names: [String] = []
        withUnsafeMutablePointer(to: &names) { list in
            _ = mg_tls_certificate_names(ctx, { context, name, length in
                guard let context, let name else { return }
                let bytes = UnsafeRawBufferPointer(start: name, count: length)
                context.assumingMemoryBound(to: [String].self).pointee.append(String(decoding: bytes, as: UTF8.self).lowercased())
            }, list)
        }
        return names
    }
}

/// Session ticket keys, rotated: a fresh random key each period seals new tickets, the
/// previous period's still opens (and renews) its tickets, older keys are wiped. One store
/// serves every listener and generation of a process, so a session resumes on any worker and
/// across reloads.
public final class TLSTicketKeys: @unchecked Sendable {
    /// The process's keys, rotated hourly: a ticket lasts one to two hours.
    public static let process = TLSTicketKeys(rotation: 3600)

    let store: OpaquePointer

    /// A store rotating every `rotation` seconds (at least 1).
    public init(rotation: Int) {
        guard let store = mg_tls_ticket_keys_new(Int64(max(rotation, 1))) else { fatalError("cannot make session ticket keys (no randomness)") }
        self.store = store
    }

    deinit { mg_tls_ticket_keys_free(store) }

    /// Moves this store's clock `seconds` on: tests of rotation, without waiting.
    public func advance(seconds: Int) { mg_tls_ticket_keys_advance(store, Int64(seconds)) }
}

/// A TLS configuration or handshake problem, as a message naming the file where there is one.
public struct TLSError: Error, CustomStringConvertible, Sendable {
    public let description: String
    /// The certificate source (its index in the list given) the problem is with, if one.
    public let source: Int?
    public init(_ description: String, source: Int? = nil) {
        self.description = description
        self.source = source
    }

    /// A NUL-terminated C message buffer as text.
    static func text(_ buffer: [CChar]) -> String {
        String(decoding: buffer.prefix { $0 != 0 }.map { UInt8(bitPattern: $0) }, as: UTF8.self)
    }
}

/// A client context for an upstream's targets: its CAs (or the system's roots), verification,
/// and the certificate the gateway shows when asked. Built off the event loops (it reads
/// files) with each generation; immutable afterwards, so every loop's connections share it.
public final class TLSClientContext: @unchecked Sendable {
    let context: OpaquePointer
    /// Whether the peer's certificate is verified (on unless the config says otherwise).
    public let verifies: Bool

    /// Throws naming the file and OpenSSL's reason.
    public init(caFile: String?, certificate: TLSCertificates.Source?, verify: Bool = true, minVersion: TLSCertificates.Version = .tls12) throws(TLSError) {
        var error = [CChar](repeating: 0, count: 512)
        guard let context = mg_tls_client_context(caFile, Int32(minVersion.rawValue), &error, error.count) else { throw TLSError(TLSError.text(error)) }
        if let certificate, mg_tls_use_client_certificate(context, certificate.cert, certificate.key, &error, error.count) != 1 {
            SSL_CTX_free(context)
            throw TLSError(TLSError.text(error))
        }
        mg_tls_client_settings(context, verify ? 1 : 0)
        self.context = context
        self.verifies = verify
    }

    deinit { SSL_CTX_free(context) }
}
