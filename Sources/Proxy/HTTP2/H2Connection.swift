import Config
import NIOCore
import NIOHPACK
import NIOHTTP2
import SocketLoop
import TLS

/// One client's HTTP/2 connection: the frames swift-nio-http2's `NIOHTTP2Handler` has checked
/// (framing, HPACK, stream states, flow-control accounting, its defences against floods and
/// resets) come here, and each stream is served by an ``H2Lane`` and the ordinary
/// `DownstreamConnectionHandler` behind it, on the connection's loop.
///
/// What is decided here: which lane serves a stream, how much window the client gets back
/// (NIO grants none by itself without its multiplexer), when writes are flushed (once per
/// loop turn, for every stream together), and when the connection ends: `GOAWAY` on drain
/// or idle, close after the `GOAWAY` NIO sends for a connection error.
final class H2Connection: ChannelInboundHandler, NIOHTTP2FrameDelegate {
    typealias InboundIn = HTTP2Frame
    typealias OutboundOut = HTTP2Frame

    /// A stream's window comes back once the handler has taken this much of its body.
    static let streamCreditThreshold = 32 * 1024
    /// The connection's receive window (raised from 64 KB at the start, so one stream's
    /// upload does not wait for round trips) and the amount taken before it is topped up.
    static let connectionWindow = 1 << 20
    static let connectionCreditThreshold = 512 * 1024
    /// A lane reports itself unwritable past this many bytes queued (its handler then stops
    /// reading the upstream), and tracks its DATA only past `untrackedBytes` sent.
    static let laneHighWatermark = 128 * 1024
    static let untrackedBytes = 64 * 1024
    /// The handler's response heads are its own; these bound them all the same.
    static let maxResponseHead = 64 * 1024
    static let responseHeadLimits = HeadLimits(maxHeaderBytes: maxResponseHead, maxHeaderCount: 1000, maxURIBytes: maxResponseHead)

    let worker: ProxyWorker
    let listener: ListenerHandle
    let tls: TLSStream?
    let loop: SocketLoop
    let allocator = ByteBufferAllocator()
    let remoteAddress: SocketAddress?
    /// Frames out, flushed once per read or loop turn for every stream.
    private let output: H2FrameOutput
    private var context: ChannelHandlerContext? { output.context }
    /// The lane serving each open stream, and the lanes waiting for the next stream.
    private var streams: [HTTP2StreamID: H2Lane] = [:]
    private var idle: [H2Lane] = []
    private var lastStreamID = HTTP2StreamID(0)
    private(set) var goingAway = false
    private var closed = false
    private(set) var channelWritable = true
    private var timer = ConnectionTimer()
    private var lastActivity: NIODeadline

    init(worker: ProxyWorker, listener: ListenerHandle, loop: SocketLoop, tls: TLSStream?, remoteAddress: SocketAddress?) {
        self.worker = worker
        self.listener = listener
        self.loop = loop
        self.output = H2FrameOutput(loop: loop)
        self.tls = tls
        self.remoteAddress = remoteAddress
        self.lastActivity = worker.clock.now()
    }

    /// The `NIOHTTP2Handler` in front of this one: settings from the limits, NIO's defences on.
    static func frameHandler(_ limits: Limits, delegate: H2Connection) -> NIOHTTP2Handler {
        var connection = NIOHTTP2Handler.ConnectionConfiguration()
        connection.initialSettings = [
            HTTP2Setting(parameter: .maxConcurrentStreams, value: limits.maxConcurrentStreams),
            HTTP2Setting(parameter: .initialWindowSize, value: 65535),
            HTTP2Setting(parameter: .maxFrameSize, value: 16384),
            HTTP2Setting(parameter: .maxHeaderListSize, value: limits.maxHeaderBytes),
        ]
        // Checked by `H2RequestHead` instead (and the answers are ours): see there why.
        connection.headerBlockValidation = .disabled
        return NIOHTTP2Handler(mode: .server, frameDelegate: delegate, connectionConfiguration: connection)
    }

    /// Streams in progress whose handler holds an exchange, for tests.
    var exchangesInUse: Int {
        streams.values.reduce(0) { $0 + ((($1.delegate as? DownstreamConnectionHandler)?.exchange.isVacant ?? true) ? 0 : 1) }
    }

    // MARK: channel events

    func handlerAdded(context: ChannelHandlerContext) {
        output.context = context
    }

    /// The context holds this handler: dropping it here ends the cycle once the channel closes.
    func handlerRemoved(context: ChannelHandlerContext) {
        output.context = nil
    }

    func channelActive(context: ChannelHandlerContext) {
        send(HTTP2Frame(streamID: .rootStream, payload: .windowUpdate(windowSizeIncrement: Self.connectionWindow - 65535)), promise: nil)
        context.flush()
        armTimer()
        context.fireChannelActive()
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        let frame = unwrapInboundIn(data)
        output.readStarted()
        lastActivity = worker.clock.now()
        switch frame.payload {
        case .headers(let headers):
            if let lane = streams[frame.streamID] {
                // NIO lets a second block through only as trailers, which end the stream.
                lane.receiveTrailers()
                return
            }
            startStream(frame.streamID, headers)
        case .data(let data):
            let length = data.data.readableBytes + (data.paddingBytes.map { $0 + 1 } ?? 0)
            output.received(length)
            guard let lane = streams[frame.streamID], case .byteBuffer(let bytes) = data.data else { return }
            lane.receive(bytes, flowControlled: length, endStream: data.endStream)
        default:
            // SETTINGS, PING, WINDOW_UPDATE: NIO answers and accounts; RST_STREAM arrives as
            // a `StreamClosedEvent`; a client's GOAWAY changes nothing for streams it started.
            break
        }
    }

    /// Lanes whose request head waits for the rest of this read (see `H2Lane.begin`).
    private var gathering: [H2Lane] = []

    func gather(_ lane: H2Lane) { gathering.append(lane) }

    func channelReadComplete(context: ChannelHandlerContext) {
        if !gathering.isEmpty {
            let lanes = gathering
            gathering.removeAll(keepingCapacity: true)
            for lane in lanes { lane.endGathering() }
        }
        output.readEnded()
        context.fireChannelReadComplete()
    }

    func userInboundEventTriggered(context: ChannelHandlerContext, event: Any) {
        if let closed = event as? StreamClosedEvent, closed.reason != nil, let lane = streams[closed.streamID] {
            lane.streamReset()
        }
        context.fireUserInboundEventTriggered(event)
    }

    /// NIO reports a stream's errors here too (unwrapped, after its RST_STREAM, whose
    /// `StreamClosedEvent` ends the lane), so an error alone ends nothing: a connection error
    /// is known by the GOAWAY NIO writes for it (`wroteFrame`).
    func errorCaught(context: ChannelHandlerContext, error: any Error) {
        if let failed = error as? NIOHTTP2Errors.StreamError {
            streams[failed.streamID]?.streamReset()
        }
    }

    /// NIO's frames as they are written: a GOAWAY with an error (a flood, a protocol error,
    /// too many resets or glitches) ends the connection once it is out.
    func wroteFrame(_ frame: HTTP2Frame) {
        guard case .goAway(_, let code, _) = frame.payload, code != .noError, !closed else { return }
        goingAway = true
        // Nothing more is read from an abusive peer; the close waits for the GOAWAY itself,
        // which NIO writes after telling us.
        try? context?.channel.syncOptions?.setOption(.autoRead, value: false)
        loop.enqueue { [self] in closeAfterFlush() }
    }

    func channelWritabilityChanged(context: ChannelHandlerContext) {
        channelWritable = context.channel.isWritable
        for lane in streams.values { lane.writabilityMayHaveChanged() }
        context.fireChannelWritabilityChanged()
    }

    func channelInactive(context: ChannelHandlerContext) {
        closed = true
        output.closed = true
        timer.cancel()
        worker.unregisterH2(self)
        let lanes = Array(streams.values) + idle
        streams = [:]
        idle = []
        for lane in lanes { lane.connectionClosed() }
        context.fireChannelInactive()
    }

    // MARK: streams

    private func startStream(_ id: HTTP2StreamID, _ headers: HTTP2Frame.FramePayload.Headers) {
        guard !goingAway else {
            send(HTTP2Frame(streamID: id, payload: .rstStream(.refusedStream)), promise: nil)
            return
        }
        let lane = idle.popLast() ?? makeLane()
        if id > lastStreamID { lastStreamID = id }
        streams[id] = lane
        if let refused = lane.begin(id, headers: headers.headers, endStream: headers.endStream) {
            streams[id] = nil
            idle.append(lane)
            send(HTTP2Frame(streamID: id, payload: .rstStream(refused)), promise: nil)
        }
    }

    private func makeLane() -> H2Lane {
        let lane = H2Lane(connection: self)
        let handler = DownstreamConnectionHandler(worker: worker, listener: listener)
        lane.delegate = handler
        handler.attach(.h2(lane), register: false)
        return lane
    }

    /// A lane's stream is over (`id`, when it had one); a `reusable` lane waits for the next.
    func laneFinished(_ lane: H2Lane, _ id: HTTP2StreamID?, reusable: Bool = true) {
        if let id, streams[id] === lane { streams[id] = nil }
        if reusable, !closed {
            if goingAway {
                loop.enqueue { lane.close(error: nil) }
            } else {
                idle.append(lane)
            }
        }
        if goingAway, streams.isEmpty { closeAfterFlush() }
    }

    /// A lane closed: it serves nothing more.
    func forget(_ lane: H2Lane) {
        if let i = idle.firstIndex(where: { $0 === lane }) { idle.remove(at: i) }
    }

    // MARK: writing

    func send(_ frame: HTTP2Frame, promise: EventLoopPromise<Void>?) { output.send(frame, promise: promise) }

    func sendWindowUpdate(_ id: HTTP2StreamID, _ increment: Int) {
        send(HTTP2Frame(streamID: id, payload: .windowUpdate(windowSizeIncrement: increment)), promise: nil)
        requestFlush()
    }

    func requestFlush() { output.requestFlush() }

    func enqueue(_ task: @escaping () -> Void) { loop.enqueue(task) }

    // MARK: ending

    /// Graceful end (shutdown, a listener removed): `GOAWAY` naming the last stream started;
    /// streams in flight finish, new ones are refused, and the connection closes after the last.
    func drain() {
        guard !goingAway, !closed else { return }
        goingAway = true
        send(HTTP2Frame(streamID: .rootStream, payload: .goAway(lastStreamID: lastStreamID, errorCode: .noError, opaqueData: nil)), promise: nil)
        let waiting = idle
        idle = []
        for lane in waiting { lane.close(error: nil) }
        if streams.isEmpty { closeAfterFlush() } else { requestFlush() }
    }

    /// Closes now (the drain timeout passed).
    func forceClose() {
        guard !closed, let context else { return }
        context.close(promise: nil)
    }

    private func closeAfterFlush() {
        guard !closed, let context else { return }
        context.flush()
        (context.channel as? SocketChannel)?.closeAfterFlush()
    }

    // MARK: idle timeout

    private func armTimer() {
        let deadline = lastActivity + worker.generation.shared.clientIdleTimeout
        timer.arm(at: deadline, loop: worker.eventLoop, socketLoop: loop) { [self] in
            timer.fired()
            timerFired()
        }
    }

    /// With no stream open and nothing heard for the idle timeout, the connection ends with
    /// `GOAWAY` (RFC 9113 9.1: the client learns no stream was lost).
    private func timerFired() {
        guard !closed else { return }
        let now = worker.clock.now()
        if streams.isEmpty, now - lastActivity >= worker.generation.shared.clientIdleTimeout {
            drain()
            return
        }
        if !streams.isEmpty { lastActivity = max(lastActivity, now) }
        armTimer()
    }
}

@available(*, unavailable)
extension H2Connection: Sendable {}
