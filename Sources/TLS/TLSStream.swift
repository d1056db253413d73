import COpenSSL
import CTLS
import NIOCore
import SocketLoop

/// TLS over another stream (a socket): ciphertext to and from `lower` through OpenSSL's
/// memory BIOs, plaintext to and from the owner, which sees an ordinary ``ByteStream``.
///
/// A state machine driven by the lower stream's events: `handshaking` (the owner's writes wait),
/// `open`, `closed`. Runs on the lower stream's loop, like the stream itself.
public final class TLSStream: ByteStream, ByteStreamDelegate {
    public let lower: any ByteStream
    public var delegate: (any ByteStreamDelegate)?
    /// The certificates the handshake chooses from: kept alive while this connection may ask.
    private let certificates: TLSCertificates?
    private let ssl: OpaquePointer
    private let input: OpaquePointer
    private let output: OpaquePointer
    private let allocator = ByteBufferAllocator()

    public enum State: Equatable, Sendable {
        case handshaking
        case open
        case closed
    }
    public private(set) var state: State = .handshaking
    /// The owner's writes made before the handshake finished, sent once it has.
    private var early: [(ByteBuffer, EventLoopPromise<Void>?)] = []
    private var earlyBytes = 0
    /// Most bytes the owner may queue before the handshake ends.
    public static let maxEarlyBytes = 256 * 1024
    private var readsPaused = false
    /// The handshake's deadline, while one is armed.
    private var handshakeTimer: (SocketLoop, SocketLoop.TimerHandle)?
    /// Called once when the handshake ends, finished or not (the worker counts handshakes in
    /// progress with it).
    public var onHandshakeEnded: (() -> Void)?

    /// A server side for a connection accepted on a TLS listener.
    public init(serving lower: any ByteStream, certificates: TLSCertificates) throws(SocketError) {
        guard let ssl = SSL_new(certificates.defaultContext) else { throw .tls("cannot create a TLS connection") }
        self.lower = lower
        self.certificates = certificates
        self.ssl = ssl
        (input, output) = Self.attachMemoryBIOs(ssl)
        SSL_set_accept_state(ssl)
    }

    /// A client side to an upstream: sends `serverName` (SNI) and verifies the certificate is
    /// for it, or for the IP address `address` when there is no name; offers `session` (from
    /// an earlier connection to the same target) for resumption.
    /// `http2`: ALPN offers only `h2` (the caller checks ``negotiatedH2`` once open).
    public init(
        connectingOver lower: any ByteStream, client: TLSClientContext, serverName: String?, address: String? = nil, session: TLSSession? = nil,
        http2: Bool = false
    ) throws(SocketError) {
        guard let ssl = SSL_new(client.context) else { throw .tls("cannot create a TLS connection") }
        self.lower = lower
        self.certificates = nil
        self.ssl = ssl
        (input, output) = Self.attachMemoryBIOs(ssl)
        SSL_set_connect_state(ssl)
        if client.verifies {
            if let serverName {
                guard mg_tls_set_server_name(ssl, serverName) == 1 else { throw .tls("bad server name \(serverName)") }
            } else if let address {
                guard mg_tls_expect_ip(ssl, address) == 1 else { throw .tls("bad address \(address)") }
            }
        } else if let serverName {
            _ = mg_tls_send_server_name(ssl, serverName)
        }
        if let session { _ = SSL_set_session(ssl, session.pointer) }
        if http2 { _ = mg_tls_client_offer_h2(ssl) }
    }

    /// Whether the handshake resumed the session offered.
    public var resumed: Bool { SSL_session_reused(ssl) == 1 }

    /// The session to offer the next connection to the same server; nil when it cannot be resumed.
    public func resumableSession() -> TLSSession? {
        guard state == .open, let session = SSL_get1_session(ssl) else { return nil }
        if SSL_SESSION_is_resumable(session) == 1 { return TLSSession(session) }
        SSL_SESSION_free(session)
        return nil
    }

    /// Why the stream closed, when it closed with an error (a failed handshake's reason).
    public private(set) var failure: SocketError?

    private static func attachMemoryBIOs(_ ssl: OpaquePointer) -> (OpaquePointer, OpaquePointer) {
        let input = BIO_new(BIO_s_mem())!
        let output = BIO_new(BIO_s_mem())!
        // An empty input BIO says "retry" rather than "end of file".
        _ = BIO_ctrl(input, BIO_C_SET_BUF_MEM_EOF_RETURN, -1, nil)
        SSL_set_bio(ssl, input, output)
        return (input, output)
    }

    deinit { SSL_free(ssl) }

    /// Closes the connection if the handshake has not finished `timeout` from now.
    public func armHandshakeTimeout(_ timeout: TimeAmount, on loop: SocketLoop) {
        guard state == .handshaking else { return }
        let handle = loop.setTimer(at: .now() + timeout) { [weak self] in
            guard let self, self.state == .handshaking else { return }
            self.handshakeTimer = nil
            self.lower.close(error: .tls("handshake timed out"))
        }
        handshakeTimer = (loop, handle)
    }

    private func handshakeEnded() {
        if let (loop, handle) = handshakeTimer {
            _ = loop.cancelTimer(handle)
            handshakeTimer = nil
        }
        let ended = onHandshakeEnded
        onHandshakeEnded = nil
        ended?()
    }

    /// Starts a client handshake (a server waits for the client's hello).
    public func startHandshake() {
        advance()
        sendOutput(promise: nil)
        lower.flush()
    }

    /// The negotiated protocol (`TLSv1.3`) and cipher, once open.
    public var protocolVersion: String? { state == .open ? SSL_get_version(ssl).map { String(cString: $0) } : nil }
    public var cipher: String? {
        guard state == .open, let cipher = SSL_get_current_cipher(ssl), let name = SSL_CIPHER_get_name(cipher) else { return nil }
        return String(cString: name)
    }
    /// A verified peer certificate: its subject (RFC 2253), SHA-256 fingerprint (hex) and DNS names.
    public struct PeerCertificate: Sendable, Equatable {
        public var subject = ""
        public var fingerprint = ""
        public var names: [String] = []
    }

    /// The peer's certificate, when it sent one and it verified.
    public var peerCertificate: PeerCertificate? {
        guard state == .open else { return nil }
        var peer = PeerCertificate()
        let found = withUnsafeMutablePointer(to: &peer) { pointer in
            mg_tls_peer_certificate(ssl, { context, kind, text, length in
                guard let context, let text else { return }
                let value = String(decoding: UnsafeRawBufferPointer(start: text, count: length), as: UTF8.self)
                let peer = context.assumingMemoryBound(to: PeerCertificate.self)
                switch kind {
                case Int32(UInt8(ascii: "s")): peer.pointee.subject = value
                case Int32(UInt8(ascii: "f")): peer.pointee.fingerprint = value
                default: peer.pointee.names.append(value)
                }
            }, pointer)
        }
        return found == 1 ? peer : nil
    }

    /// The handshake chose HTTP/2 through ALPN.
    public var negotiatedH2: Bool { state == .open && mg_tls_alpn_is_h2(ssl) == 1 }
    /// The server name the client asked for.
    public var serverName: String? { mg_tls_server_name(ssl).map { String(cString: $0) } }

    // MARK: ByteStream (the owner's side)

    public var remoteAddress: SocketAddress? { lower.remoteAddress }
    public var isOpen: Bool { state != .closed && lower.isOpen }
    public var isWritable: Bool { lower.isWritable }

    public func write(_ bytes: ByteBuffer, promise: EventLoopPromise<Void>?) {
        switch state {
        case .closed:
            promise?.fail(SocketError.closed)
        case .handshaking:
            guard earlyBytes + bytes.readableBytes <= Self.maxEarlyBytes else {
                promise?.fail(SocketError.tls("too much written before the handshake finished"))
                return
            }
            earlyBytes += bytes.readableBytes
            early.append((bytes, promise))
        case .open:
            encrypt(bytes)
            sendOutput(promise: promise)
        }
    }

    public func flush() { lower.flush() }

    public func close(error: SocketError?) {
        guard state != .closed else { return }
        if error == nil, state == .open {
            _ = SSL_shutdown(ssl)
            sendOutput(promise: nil)
            lower.flush()
        }
        lower.close(error: error)
    }

    public func closeAfterFlush(lingering: TimeAmount?, maxDrained: Int) {
        if state == .open {
            _ = SSL_shutdown(ssl)
            sendOutput(promise: nil)
        }
        lower.closeAfterFlush(lingering: lingering, maxDrained: maxDrained)
    }

    public func pauseReads() {
        readsPaused = true
        lower.pauseReads()
    }

    public func resumeReads() {
        readsPaused = false
        lower.resumeReads()
        // Plaintext OpenSSL already holds is delivered now: no socket event would bring it.
        if state == .open, SSL_pending(ssl) > 0 || BIO_ctrl_pending(input) > 0 {
            decrypt()
            delegate?.streamReadComplete(self)
        }
    }

    // MARK: ByteStreamDelegate (the socket's side)

    public func streamRead(_ stream: any ByteStream, _ bytes: ByteBuffer) {
        bytes.withUnsafeReadableBytes { raw in
            _ = BIO_write(input, raw.baseAddress, Int32(raw.count))
        }
        if state == .handshaking { advance() }
        if state == .open { decrypt() }
        sendOutput(promise: nil)
    }

    public func streamReadComplete(_ stream: any ByteStream) {
        lower.flush()
        if state == .open { delegate?.streamReadComplete(self) }
    }

    public func streamWritabilityChanged(_ stream: any ByteStream) {
        delegate?.streamWritabilityChanged(self)
    }

    public func streamClosed(_ stream: any ByteStream, error: SocketError?) {
        guard state != .closed else { return }
        state = .closed
        failure = error
        handshakeEnded()
        for (_, promise) in early { promise?.fail(SocketError.closed) }
        early = []
        let delegate = self.delegate
        self.delegate = nil
        delegate?.streamClosed(self, error: error)
    }

    // MARK: OpenSSL

    /// Runs the handshake as far as the bytes received allow.
    private func advance() {
        let result = SSL_do_handshake(ssl)
        if result == 1 {
            state = .open
            handshakeEnded()
            let queued = early
            early = []
            earlyBytes = 0
            for (bytes, promise) in queued {
                encrypt(bytes)
                sendOutput(promise: promise)
            }
            return
        }
        let code = SSL_get_error(ssl, result)
        if code == SSL_ERROR_WANT_READ || code == SSL_ERROR_WANT_WRITE { return }
        fail("handshake failed")
    }

    /// Hands every whole record received to the owner, as plaintext.
    private func decrypt() {
        while state == .open, !readsPaused {
            // Nothing left to decrypt: no buffer for an SSL_read that would only say "want read".
            let buffered = Int(SSL_pending(ssl)), received = Int(BIO_ctrl_pending(input))
            guard buffered > 0 || received > 0 else { return }
            // One record at most per read; its plaintext is no longer than what it arrived as.
            let capacity = min(max(buffered, received), 16 * 1024)
            var buffer = allocator.buffer(capacity: capacity)
            var code: Int32 = SSL_ERROR_NONE
            buffer.writeWithUnsafeMutableBytes(minimumWritableBytes: capacity) { raw in
                let n = SSL_read(ssl, raw.baseAddress, Int32(raw.count))
                if n > 0 { return Int(n) }
                code = SSL_get_error(ssl, n)
                return 0
            }
            if buffer.readableBytes > 0 {
                delegate?.streamRead(self, buffer)
                continue
            }
            switch code {
            case SSL_ERROR_WANT_READ, SSL_ERROR_WANT_WRITE:
                return
            case SSL_ERROR_ZERO_RETURN:
                // The peer's close_notify: an orderly end of stream.
                sendOutput(promise: nil)
                lower.close(error: nil)
                return
            default:
                fail("bad record")
                return
            }
        }
    }

    private func encrypt(_ bytes: ByteBuffer) {
        bytes.withUnsafeReadableBytes { raw in
            var offset = 0
            while offset < raw.count {
                // Memory BIOs take everything: a write fails only on a broken connection.
                let n = SSL_write(ssl, raw.baseAddress! + offset, Int32(min(raw.count - offset, Int(Int32.max))))
                guard n > 0 else { return }
                offset += Int(n)
            }
        }
    }

    /// Sends the ciphertext OpenSSL produced to the socket.
    private func sendOutput(promise: EventLoopPromise<Void>?) {
        let pending = Int(BIO_ctrl_pending(output))
        guard pending > 0 else {
            promise?.succeed(())
            return
        }
        var buffer = allocator.buffer(capacity: pending)
        buffer.writeWithUnsafeMutableBytes(minimumWritableBytes: pending) { raw in
            Int(max(BIO_read(output, raw.baseAddress, Int32(pending)), 0))
        }
        lower.write(buffer, promise: promise)
    }

    private func fail(_ what: String) {
        let code = ERR_get_error()
        var reason = [CChar](repeating: 0, count: 256)
        if code != 0 { ERR_error_string_n(code, &reason, reason.count) }
        ERR_clear_error()
        var text = code != 0 ? TLSError.text(reason) : "peer sent no TLS"
        // A certificate that did not verify: say why (unknown CA, wrong name, expired).
        if let failure = mg_tls_verify_failure(ssl) { text += " (\(String(cString: failure)))" }
        // The alert OpenSSL made goes out before the close.
        sendOutput(promise: nil)
        lower.flush()
        lower.close(error: .tls("\(what): \(text)"))
    }
}

/// A client's TLS session (its ticket or id), offered to resume with the same server.
public final class TLSSession {
    let pointer: OpaquePointer
    init(_ pointer: OpaquePointer) { self.pointer = pointer }
    deinit { SSL_SESSION_free(pointer) }
}

@available(*, unavailable)
extension TLSSession: Sendable {}
