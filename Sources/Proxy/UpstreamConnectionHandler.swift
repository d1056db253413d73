// Hot path: per request, no allocation.
import NIOCore
import SocketLoop
import TLS

/// One kept-alive connection to an origin server. Owned by a `TargetPool` while idle and by
/// one request while in use; it forwards bytes and events to that request and holds reads
/// while the client cannot keep up (back-pressure toward the upstream).
///
/// Like the downstream handler, the delegate of a `ByteStream`: a socket on the gateway's
/// workers, an in-memory pipe in the simulation (see `ConnectionIO`).
final class UpstreamConnectionHandler: ByteStreamDelegate {

    private var io = ConnectionIO.none
    /// The request using this connection; nil while pooled.
    var exchange: UpstreamExchange?
    /// The pool it returns to. Strong: a `weak` one moves the pool's refcount to a side table,
    /// which made every retain of it (one per request) take the slow path. The cycle with the
    /// pool's idle list is broken when the connection closes.
    var pool: TargetPool?
    /// Whether `autoRead` is off (the client cannot take more).
    private var readsOff = false
    private let clock: WorkerClock
    private let socketLoop: SocketLoop?
    private var lastActivity: NIODeadline
    private var timer = ConnectionTimer()
    private var readTimeout: TimeAmount
    private var idleTimeout: TimeAmount
    /// Requests this connection has carried; a reused one may have gone stale in the pool.
    private(set) var uses = 0

    init(readTimeout: TimeAmount, idleTimeout: TimeAmount, clock: WorkerClock, socketLoop: SocketLoop?) {
        self.readTimeout = readTimeout
        self.idleTimeout = idleTimeout
        self.clock = clock
        self.socketLoop = socketLoop
        lastActivity = clock.now()
    }

    /// Kept from channel events: asking the channel costs an atomic load and two retains.
    private(set) var isActive = false
    /// Kept from writability events: asking the channel costs an atomic load and retains.
    private(set) var isWritable = true

    /// Takes over a connected socket (the gateway's workers).
    func attach(socket connection: TCPConnection) throws(SocketError) {
        io = .socket(connection)
        isActive = true
        try connection.start(delegate: self)
    }

    /// Takes over a TLS stream whose handshake has finished (upstreams with `tls:`).
    func attach(tls stream: TLSStream) {
        io = .tls(stream)
        isActive = stream.isOpen
        stream.delegate = self
    }

    /// Takes over a stream lane of an HTTP/2 connection (`protocol: h2`).
    func attach(h2 lane: H2ClientLane) {
        io = .h2Client(lane)
        isActive = lane.isOpen
        lane.delegate = self
    }

    /// The TLS stream, on a TLS connection.
    var tlsStream: TLSStream? {
        if case .tls(let stream) = io { return stream }
        return nil
    }

    /// Takes over one end of an in-memory pipe (`moongate test`'s simulation).
    func attach(memory end: MemoryPipe.End) {
        io = .memory(end)
        isActive = true
        end.delegate = self
    }

    /// Hands the connection to a request. `now` is the request's own recent timestamp, so the
    /// read timeout does not start from when the connection last worked (possibly long ago).
    func attach(_ exchange: UpstreamExchange, readTimeout: TimeAmount, now: NIODeadline) {
        self.exchange = exchange
        self.readTimeout = readTimeout
        lastActivity = now
        uses += 1
        armTimer()
    }

    /// Takes the connection back from a request, to be pooled.
    func detach(idleTimeout: TimeAmount) {
        exchange = nil
        self.idleTimeout = idleTimeout
        lastActivity = clock.now()
        setReadsPaused(false)
        armTimer()
    }

    /// Writing counts as activity: the read timeout runs from the end of the request (as
    /// nginx's proxy_read_timeout), so a long upload is not cut while the origin listens.
    func write(_ buffer: ByteBuffer) {
        lastActivity = clock.now()
        io.write(buffer)
    }

    func flush() {
        io.flush()
    }

    func close() {
        exchange = nil
        io.close()
    }

    /// Stops or resumes reading from the origin (back-pressure from the client side).
    func setReadsPaused(_ paused: Bool) {
        guard paused != readsOff, io.isAttached else { return }
        readsOff = paused
        io.setReading(!paused)
    }

    /// Leaves the pool for good (a tunnel takes the connection over after `101`): no timer,
    /// no request, no pool slot. The connection's I/O, for the tunnel.
    func leaveForTunnel() -> ConnectionIO {
        let taken = io
        io = .none
        exchange = nil
        isActive = false
        timer.cancel()
        pool?.remove(self)
        pool = nil
        return taken
    }

    // MARK: channel events

    // MARK: stream events (ByteStreamDelegate)

    func streamRead(_ stream: ByteStream, _ bytes: ByteBuffer) { read(bytes) }
    func streamReadComplete(_ stream: ByteStream) { exchange?.upstreamReadComplete() }
    func streamWritabilityChanged(_ stream: ByteStream) { writabilityChanged(stream.isWritable) }

    func streamClosed(_ stream: ByteStream, error: SocketError?) {
        if let error { failed(error) }
        closed()
        io = .none
    }

    // MARK: events

    private func read(_ buffer: ByteBuffer) {
        lastActivity = clock.now()
        if let exchange {
            exchange.upstreamRead(buffer)
        } else {
            // Bytes on an idle pooled connection: the origin is confused; never hand it out.
            close()
        }
    }

    private func closed() {
        isActive = false
        timer.cancel()
        pool?.remove(self)
        pool = nil
        let exchange = self.exchange
        self.exchange = nil
        exchange?.upstreamClosed(error: nil, reused: uses > 1)
    }

    private func failed(_ error: Error) {
        let exchange = self.exchange
        self.exchange = nil
        exchange?.upstreamClosed(error: error, reused: uses > 1)
    }

    private func writabilityChanged(_ writable: Bool) {
        isWritable = writable
        exchange?.upstreamWritabilityChanged(writable: isWritable)
    }

    // MARK: timeouts

    /// One timer per connection, re-armed lazily: a request only stamps `lastActivity`, and
    /// the timer, when it fires, checks whether the deadline really passed.
    private func armTimer() {
        guard let eventLoop = io.eventLoop else { return }
        let deadline = lastActivity + (exchange == nil ? idleTimeout : readTimeout)
        // A later deadline is picked up when the timer fires; an earlier one re-arms it.
        if timer.isArmed, timer.deadline <= deadline { return }
        timer.arm(at: deadline, loop: eventLoop, socketLoop: socketLoop) { [self] in
            timer.fired()
            timerFired()
        }
    }

    private func timerFired() {
        guard io.isAttached else { return }
        let wait = exchange == nil ? idleTimeout : readTimeout
        if clock.now() >= lastActivity + wait {
            if let exchange {
                self.exchange = nil
                exchange.upstreamTimedOut()
            }
            io.close()
        } else {
            armTimer()
        }
    }
}

@available(*, unavailable)
extension UpstreamConnectionHandler: Sendable {}
