import Config
import HTTPClient
import Logging
import NIOCore
import SocketLoop
import TLS

/// Kept-alive connections to one origin server, owned by one event loop. Idle connections are
/// reused last-in first-out (the warmest first); beyond `maxIdle` they are closed.
final class TargetPool {
    let key: TargetKey
    let eventLoop: EventLoop
    /// The worker's clock (the simulation's moves only when a test advances it).
    let clock: WorkerClock
    private let socketLoop: SocketLoop?
    private(set) var address: SocketAddress
    private(set) var settings: PoolSettings
    /// `host:port`, the Host header for routes with `host_header: target`.
    let hostHeader: [UInt8]
    /// `host:port`, for access-log lines.
    let logName: [UInt8]
    private var idle: [UpstreamConnectionHandler] = []
    /// Makes connections instead of sockets (the simulation `moongate test` runs); nil in the gateway.
    let connector: UpstreamConnector?
    /// Connections open (idle or in use or connecting), for tests and the status page.
    private(set) var openConnections = 0
    /// This loop's view of the target's health (passive: from the tries it sees).
    var health = TargetHealth()
    var breaker = TargetBreaker()
    /// Active health checks (the control plane's probes) found the target down.
    var probedDown = false
    /// Requests waiting for a connection while `maxConnections` are open, oldest first. Each
    /// gets a released connection, or nil: a connection closed, so it may open one.
    private var waiters = CircularBuffer<(id: Int, ready: (UpstreamConnectionHandler?) -> Void)>()
    private var nextWaiter = 0
    /// TLS to the target (nil: plaintext): the current generation's context and names.
    private(set) var tls: UpstreamTLSClient?
    /// The last resumable TLS session with the target, offered by the next connection (one
    /// per pool, so per loop: no lock).
    private var tlsSession: TLSSession?
    /// Handshake failures are logged once per reason per 10 s, not once per request.
    private var lastTLSFailure: (reason: String, at: NIODeadline)?
    let logger: Logger?

    /// Whether a new connection may be opened now.
    var mayConnect: Bool { settings.maxConnections == 0 || openConnections < settings.maxConnections }

    /// Queues a request for the next free connection; nil if the queue is full.
    func wait(_ ready: @escaping (UpstreamConnectionHandler?) -> Void) -> Int? {
        guard waiters.count < settings.queue else { return nil }
        nextWaiter &+= 1
        waiters.append((nextWaiter, ready))
        return nextWaiter
    }

    /// Leaves the queue (the wait timed out, or the request went away).
    func cancelWait(_ id: Int) {
        if let index = waiters.firstIndex(where: { $0.id == id }) { waiters.remove(at: index) }
    }

    var waiting: Int { waiters.count }
    var idleCount: Int { idle.count }

    init(
        key: TargetKey, address: SocketAddress, settings: PoolSettings, eventLoop: EventLoop, clock: WorkerClock = .system, connector: UpstreamConnector? = nil,
        tls: UpstreamTLSClient? = nil, logger: Logger? = nil
    ) {
        self.connector = connector
        self.tls = tls
        self.logger = logger
        self.clock = clock
        self.socketLoop = eventLoop as? SocketLoop
        self.key = key
        self.hostHeader = Array(SocketAddressSpec(host: key.host, port: key.port).description.utf8)
        self.logName = Array("\(key.host):\(key.port)".utf8)
        self.address = address
        self.settings = settings
        self.eventLoop = eventLoop
    }

    func update(address: SocketAddress, settings: PoolSettings, tls: UpstreamTLSClient? = nil) {
        self.address = address
        self.settings = settings
        if let tls, tls.context !== self.tls?.context {
            // A new generation's context (renewed CA or certificate): sessions start afresh.
            self.tls = tls
            forgetSession()
        }
        while idle.count > settings.maxIdle { idle.removeFirst().close() }
    }

    /// An idle connection, if one is alive.
    func takeIdle() -> UpstreamConnectionHandler? {
        while let connection = idle.popLast() {
            if connection.isActive { return connection }
        }
        return nil
    }

    /// Opens a new connection; the future completes on this pool's loop.
    func connect() -> EventLoopFuture<UpstreamConnectionHandler> {
        let settings = self.settings
        openConnections += 1
        let clock = self.clock, socketLoop = self.socketLoop
        let future: EventLoopFuture<UpstreamConnectionHandler>
        if let connector {
            let handler = UpstreamConnectionHandler(readTimeout: settings.readTimeout, idleTimeout: settings.idleTimeout, clock: clock, socketLoop: nil)
            future = connector.connect(self, handler: handler).assumeIsolatedUnsafeUnchecked().map { handler }.nonisolated()
        } else if let loop = socketLoop, settings.h2 {
            future = connectH2(on: loop)
        } else if let loop = socketLoop {
            // The gateway's workers: the handler is the socket's delegate, no pipeline.
            let promise = loop.makePromise(of: UpstreamConnectionHandler.self)
            TCPClient.connectSocket(to: address, on: loop, timeout: settings.connectTimeout) { result in
                switch result {
                case .success(let connection):
                    let handler = UpstreamConnectionHandler(readTimeout: settings.readTimeout, idleTimeout: settings.idleTimeout, clock: clock, socketLoop: loop)
                    if let tls = self.tls {
                        self.handshake(connection, tls: tls, on: loop, timeout: settings.connectTimeout, promise: promise) { stream in
                            handler.attach(tls: stream)
                            promise.assumeIsolatedUnsafeUnchecked().succeed(handler)
                        }
                        return
                    }
                    do {
                        try handler.attach(socket: connection)
                        promise.assumeIsolatedUnsafeUnchecked().succeed(handler)
                    } catch {
                        connection.close()
                        promise.fail(ProxyError.unreachable)
                    }
                case .failure(.timeout):
                    promise.fail(ProxyError.connectTimeout)
                case .failure:
                    promise.fail(ProxyError.unreachable)
                }
            }
            future = promise.futureResult
        } else {
            // Proxy handlers run on the gateway's loops or in the simulation only.
            future = eventLoop.makeFailedFuture(ProxyError.unreachable)
        }
        let loopBound = NIOLoopBound(self, eventLoop: eventLoop)
        return future.always { result in
            let pool = loopBound.value
            switch result {
            case .success(let handler): handler.pool = pool
            case .failure:
                pool.openConnections -= 1
                pool.wakeNext()
            }
        }
    }

    /// HTTP/2 connections to the target (`protocol: h2`), whose lanes are this pool's connections.
    private var h2Connections: [H2ClientConnection] = []

    /// A lane on a connection with room, or on a new connection.
    private func connectH2(on loop: SocketLoop) -> EventLoopFuture<UpstreamConnectionHandler> {
        let settings = self.settings
        let handler = UpstreamConnectionHandler(readTimeout: settings.readTimeout, idleTimeout: settings.idleTimeout, clock: clock, socketLoop: loop)
        if let shared = h2Connections.first(where: { $0.hasRoom }) {
            handler.attach(h2: shared.makeLane())
            let ready = loop.makePromise(of: UpstreamConnectionHandler.self)
            ready.assumeIsolatedUnsafeUnchecked().succeed(handler)
            return ready.futureResult
        }
        let promise = loop.makePromise(of: UpstreamConnectionHandler.self)
        TCPClient.connectSocket(to: address, on: loop, timeout: settings.connectTimeout) { result in
            switch result {
            case .success(let connection):
                if let tls = self.tls {
                    self.handshake(connection, tls: tls, http2: true, on: loop, timeout: settings.connectTimeout, promise: promise) { stream in
                        // The session is kept at once: an HTTP/2 connection serves many requests.
                        if let session = stream.resumableSession() { self.tlsSession = session }
                        guard let h2 = self.startH2(over: connection, stream: stream, scheme: "https", on: loop) else {
                            promise.fail(ProxyError.unreachable)
                            return
                        }
                        handler.attach(h2: h2.makeLane())
                        promise.assumeIsolatedUnsafeUnchecked().succeed(handler)
                    }
                    return
                }
                guard let h2 = self.startH2(over: connection, stream: connection, scheme: "http", on: loop) else {
                    promise.fail(ProxyError.unreachable)
                    return
                }
                handler.attach(h2: h2.makeLane())
                promise.assumeIsolatedUnsafeUnchecked().succeed(handler)
            case .failure(.timeout):
                promise.fail(ProxyError.connectTimeout)
            case .failure:
                promise.fail(ProxyError.unreachable)
            }
        }
        return promise.futureResult
    }

    /// An HTTP/2 client connection over `stream` (the socket itself, or TLS over it): the
    /// preface first, as prior knowledge or after ALPN chose h2.
    private func startH2(over connection: TCPConnection, stream: any ByteStream, scheme: String, on loop: SocketLoop) -> H2ClientConnection? {
        let adopted = stream !== connection
        let channel = adopted ? SocketChannel(adopting: stream, over: connection) : SocketChannel(connection)
        if adopted, let tls = stream as? TLSStream { tls.delegate = channel }
        let h2 = H2ClientConnection(loop: loop, remoteAddress: connection.remoteAddress, scheme: scheme)
        do {
            let pipeline = channel.pipeline.syncOperations
            try pipeline.addHandler(H2ClientConnection.frameHandler(delegate: h2))
            try pipeline.addHandler(h2)
            try channel.activate()
        } catch {
            connection.close()
            return nil
        }
        // Weak: a connection may close after a reload dropped its pool.
        h2.onClose = { [weak self, unowned h2] in self?.h2Connections.removeAll { $0 === h2 } }
        h2Connections.append(h2)
        return h2
    }

    /// TLS over a connected socket: `opened` gets the stream once the handshake has finished
    /// (with ALPN `h2` for `http2`, which the server must choose); a failed one (a certificate
    /// that does not verify, say) fails the try with the reason logged.
    private func handshake(
        _ connection: TCPConnection, tls: UpstreamTLSClient, http2: Bool = false, on loop: SocketLoop, timeout: TimeAmount,
        promise: EventLoopPromise<UpstreamConnectionHandler>, opened: @escaping (TLSStream) -> Void
    ) {
        let stream: TLSStream
        do {
            stream = try TLSStream(
                connectingOver: connection, client: tls.context, serverName: tls.serverName, address: tls.address, session: tlsSession, http2: http2)
            try connection.start(delegate: stream)
        } catch {
            connection.close()
            promise.fail(ProxyError.upstreamTLS)
            return
        }
        stream.armHandshakeTimeout(timeout, on: loop)
        stream.onHandshakeEnded = { [unowned stream, self] in
            guard stream.state == .open else {
                let reason: String
                if case .tls(let text) = stream.failure { reason = text } else { reason = "the connection closed during the handshake" }
                self.tlsFailed(reason)
                promise.fail(ProxyError.upstreamTLS)
                return
            }
            if http2, !stream.negotiatedH2 {
                self.tlsFailed("the server did not choose h2 through ALPN (protocol: h2)")
                stream.close()
                promise.fail(ProxyError.upstreamTLS)
                return
            }
            opened(stream)
        }
        stream.startHandshake()
    }

    private func tlsFailed(_ reason: String) {
        // A session that no longer works is not offered again.
        forgetSession()
        let now = clock.now()
        if let last = lastTLSFailure, last.reason == reason, now - last.at < .seconds(10) { return }
        lastTLSFailure = (reason, now)
        logger?.warning(
            "upstream TLS handshake failed",
            metadata: ["target": "\(key.host):\(key.port)", "server_name": "\(tls?.serverName ?? tls?.address ?? "")", "error": "\(reason)"])
    }

    private func forgetSession() { tlsSession = nil }

    /// Keeps the session of a TLS connection that worked, for the next one to resume: after
    /// its first exchange (TLS 1.3 tickets arrive after the handshake), not on every request.
    private func keepSession(_ connection: UpstreamConnectionHandler) {
        guard tls != nil, connection.uses == 1, let stream = connection.tlsStream, let session = stream.resumableSession() else { return }
        tlsSession = session
    }

    /// Returns a connection after a complete exchange: to the first request waiting for one,
    /// else to the idle list; it is closed if that is full.
    func release(_ connection: UpstreamConnectionHandler) {
        keepSession(connection)
        if connection.isActive, let waiter = waiters.popFirst() {
            connection.detach(idleTimeout: settings.idleTimeout)
            waiter.ready(connection)
            return
        }
        guard connection.isActive, idle.count < settings.maxIdle else {
            connection.close()
            return
        }
        connection.detach(idleTimeout: settings.idleTimeout)
        idle.append(connection)
    }

    /// Called when a connection closes, pooled or not.
    func remove(_ connection: UpstreamConnectionHandler) {
        openConnections -= 1
        if let index = idle.firstIndex(where: { $0 === connection }) { idle.remove(at: index) }
        wakeNext()
    }

    /// A connection slot is free: the first waiter may open one.
    func wakeNext() {
        if mayConnect, let waiter = waiters.popFirst() { waiter.ready(nil) }
    }

    /// Closes every idle connection (shutdown, or the target left the config).
    func closeIdle() {
        let all = idle
        idle.removeAll()
        for connection in all { connection.close() }
    }
}

@available(*, unavailable)
extension TargetPool: Sendable {}


/// Makes upstream connections without sockets: `moongate test` answers them with stubs.
protocol UpstreamConnector: AnyObject {
    /// Connects `handler` to `pool`'s target (an in-memory pipe a stub answers).
    func connect(_ pool: TargetPool, handler: UpstreamConnectionHandler) -> EventLoopFuture<Void>
    /// Answers an `upstream.call` sub-request to `upstream` (its name in the config).
    func subrequest(_ call: UpstreamCall) -> EventLoopFuture<HTTPFetch.Response>
}
