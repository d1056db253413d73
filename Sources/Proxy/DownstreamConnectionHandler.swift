// Hot path: per request, no allocation beyond the heads written.
import NIOCore
import Scripting
import SocketLoop
import TLS

/// One client connection. Reads request heads straight from the `ByteBuffer`, picks a route
/// and a pooled upstream connection, and forwards bytes both ways: the request head is
/// rewritten, bodies pass as slices (re-framed only for chunked). One request at a time:
/// pipelined requests wait in `inbound` until the current response is done.
///
/// Back-pressure: client reads stop while the upstream cannot take more (or too much is
/// buffered); upstream reads stop while the client cannot take more. Both by switching the
/// channel's `autoRead` when that changes, which is rare: intercepting every `read()` instead
/// cost two handler hops per request.
///
/// On the gateway's workers it is its socket's delegate (`ConnectionIO.socket`); in the test
/// harness and on NIO loops, a handler in the channel's pipeline. Both feed the same methods.
final class DownstreamConnectionHandler: ByteStreamDelegate, UpstreamExchange {

    enum Body {
        case none
        case length(remaining: Int)
        case chunked(ChunkedDecoder)
        case untilClose
    }

    /// Strong: `unowned` costs a runtime call per access. The worker drops its reference to
    /// this handler when the connection closes, which breaks the cycle.
    let worker: ProxyWorker
    /// Cached: `context.channel.allocator` is two calls and a retain per use.
    var allocator = ByteBufferAllocator()
    let listener: ListenerHandle
    var io = ConnectionIO.none
    /// Where the connection and its request stand; the handler carries out what it decides.
    var lifecycle = ConnectionStateMachine()
    /// Client bytes not yet consumed: a partial head, or what came after the current request.
    var inbound: ByteBuffer?
    var headScanned = 0
    var clientAddress: [UInt8] = []
    var tlsStream: TLSStream? {
        switch io {
        case .tls(let stream): return stream
        case .h2(let lane): return lane.tls
        default: return nil
        }
    }

    /// The request in progress, or the worker's vacant exchange between requests.
    var exchange: Exchange
    /// Counts requests: callbacks that outlive their request (a pool's answer, a timer) check it.
    var requestSerial = 0
    /// Chunked framing written as-is: `CRLF` after each chunk's data, and the last chunk with
    /// an empty trailer section. Shared by every connection (immutable, so never copied).
    static let crlfBytes = ByteBuffer(string: "\r\n")
    static let lastChunkBytes = ByteBuffer(string: "0\r\n\r\n")
    var crlf: ByteBuffer { Self.crlfBytes }
    var lastChunk: ByteBuffer { Self.lastChunkBytes }

    // Flow control and time.
    /// Whether `autoRead` is off on the client channel.
    var readsOff = false
    var upstreamUnflushed = false
    var lastActivity: NIODeadline
    var timer = ConnectionTimer()
    /// The tunnel the connection became after a protocol switch (`101`), while it runs.
    var tunnel: Tunnel?
    /// Until its first bytes: the connection came through a listener that serves HTTP/2.
    var mayBecomeH2 = false

    init(worker: ProxyWorker, listener: ListenerHandle) {
        self.worker = worker
        self.listener = listener
        self.exchange = worker.vacantExchange
        self.lastActivity = worker.clock.now()
    }

    // MARK: channel events

    /// Starts serving the connection behind `io`; `register`: the worker counts it as a
    /// client connection (an HTTP/2 stream's lane counts as its connection instead).
    func attach(_ io: ConnectionIO, register: Bool = true) {
        self.io = io
        if let ip = io.remoteAddress?.ipAddress { clientAddress = Array(ip.utf8) }
        if register { worker.register(self) }
        armTimer()
    }

    // MARK: stream events (ByteStreamDelegate)

    func streamRead(_ stream: ByteStream, _ bytes: ByteBuffer) { read(bytes) }
    func streamReadComplete(_ stream: ByteStream) { readComplete() }
    func streamWritabilityChanged(_ stream: ByteStream) { writabilityChanged(stream.isWritable) }
    /// An error has already closed the stream: all that is left is `closed()`.
    func streamClosed(_ stream: ByteStream, error: SocketError?) {
        closed()
        io = .none
    }

    // MARK: events

    /// The client connection has closed.
    func closed() {
        // The exchange ends first: its log line says whether the client had an answer.
        endExchange(completed: false)
        if lifecycle.clientClosed() { worker.unregister(self) }
        timer.cancel()
    }

    func read(_ bytes: ByteBuffer) {
        var buffer = bytes
        if mayBecomeH2, becameH2(&buffer) { return }
        lastActivity = worker.clock.now()
        switch lifecycle.clientBytes() {
        case .parseHead:
            appendInbound(&buffer)
            processInbound()
        case .hold:
            appendInbound(&buffer)
        case .holdForPolicy:
            appendInbound(&buffer)
            if exchange.policy.requestBodyWait != nil { continueBodyWait() }
        case .forwardBody:
            if inbound != nil {
                appendInbound(&buffer)
            } else {
                forwardRequestBody(&buffer)
                if buffer.readableBytes > 0 { appendInbound(&buffer) }
            }
        case .drop:
            break
        }
        updateReads()
    }

    func readComplete() {
        // Only request body bytes are written upstream without a flush; responses and errors
        // flush themselves. An empty flush is still a trip through the pipeline.
        if upstreamUnflushed {
            upstreamUnflushed = false
            exchange.attempt.upstream?.flush()
        }
    }

    func writabilityChanged(_ writable: Bool) {
        downstreamWritable = writable
        exchange.attempt.upstream?.setReadsPaused(!downstreamWritable)
    }

    // MARK: flow control

    /// Client bytes held while a request is in progress (pipelined requests, body bytes that
    /// came while connecting) before reads pause.
    static let maxBufferedInbound = 64 * 1024

    /// Reads keep going while a request waits for its response, so that NIO need not drop and
    /// re-add read interest (two `epoll_ctl` per request, measured); they pause only when the
    /// upstream cannot take the body or too much has been buffered.
    var readsPaused: Bool {
        lifecycle.readsPaused(
            buffered: inbound?.readableBytes ?? 0, limit: Self.maxBufferedInbound, bodyWaitLimit: exchange.policy.requestBodyWait?.bufferLimit,
            upstreamWritable: exchange.attempt.upstream?.isWritable ?? false)
    }

    /// Switches client reads to match `readsPaused`; a no-op unless that changed.
    func updateReads() {
        let paused = readsPaused
        guard paused != readsOff, io.isAttached else { return }
        readsOff = paused
        io.setReading(!paused)
    }

    @inline(__always)
    func appendInbound(_ buffer: inout ByteBuffer) {
        if inbound == nil {
            inbound = buffer
        } else {
            inbound!.writeBuffer(&buffer)
        }
        buffer.moveReaderIndex(to: buffer.writerIndex)
    }

    // MARK: UpstreamExchange (events from the upstream connection)

    /// Kept from writability events: asking the channel costs an atomic load and retains.
    var downstreamWritable = true

    func upstreamWritabilityChanged(writable: Bool) {
        if writable { updateReads() }
    }

    func upstreamReadComplete() {
        io.flush()
    }

    // MARK: closing

    /// Drain: closes now if between requests, else after the current response. A tunnel
    /// runs on until the drain timeout (`forceClose`).
    func closeWhenIdle() {
        if lifecycle.drain(buffered: inbound != nil) { io.close() }
    }

    /// Ends the connection at once (timeouts past the response head, errors, shutdown).
    func forceClose() {
        if let tunnel {
            tunnel.close()
            return
        }
        endExchange(completed: false)
        guard lifecycle.closeNow() else { return }
        io.close()
    }

    // MARK: timeouts

    /// One timer per connection, re-armed lazily: a request only stamps times, and the timer
    /// checks, when it fires, whether the deadline that applies now has really passed.
    func armTimer() {
        guard io.isAttached else { return }
        let deadline = currentDeadline
        // Keep the armed timer unless the new deadline is earlier (a request timeout shorter
        // than the idle one); a later one is picked up when it fires.
        if timer.isArmed, timer.deadline <= deadline { return }
        timer.arm(at: deadline, loop: worker.eventLoop, socketLoop: worker.socketLoop) { [self] in
            timer.fired()
            timerFired()
        }
    }

    var currentDeadline: NIODeadline {
        lifecycle.deadline(
            lastActivity: lastActivity, idleTimeout: worker.generation.shared.clientIdleTimeout,
            requestTimeout: requestTimeout)
    }

    /// `timeouts.request`, or the gRPC caller's own deadline (`grpc-timeout`) when shorter.
    var requestTimeout: TimeAmount {
        let configured = (exchange.generation?.shared ?? worker.generation.shared).requestTimeout
        guard let caller = exchange.request.headers.grpcTimeout, caller < configured else { return configured }
        return caller
    }

    func timerFired() {
        let action = lifecycle.timerFired(
            now: worker.clock.now(), lastActivity: lastActivity, idleTimeout: worker.generation.shared.clientIdleTimeout,
            requestTimeout: requestTimeout)
        switch action {
        case .rearm:
            armTimer()
        case .close:
            io.close()
        case .answer(let error):
            beginExchange()  // a head that never completed is answered as a request
            respondError(error)
        case .nothing:
            break
        }
    }
}

@available(*, unavailable)
extension DownstreamConnectionHandler: Sendable {}
