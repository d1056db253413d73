import NIOCore
import NIOHPACK
import NIOHTTP2
import SocketLoop

/// One HTTP/2 connection to an upstream target (`protocol: h2`): NIO's `NIOHTTP2Handler` in
/// client mode in front, this handler behind it. Its streams are served through
/// ``H2ClientLane``s, each an `UpstreamConnectionHandler`'s connection as the pool sees it, so
/// pooling, timeouts, retries, breakers and health work as for HTTP/1.1; many lanes share the
/// one socket.
final class H2ClientConnection: ChannelInboundHandler, NIOHTTP2FrameDelegate {
    typealias InboundIn = HTTP2Frame
    typealias OutboundOut = HTTP2Frame

    /// Lanes (streams in flight or waiting for the next request) one connection carries.
    static let maxLanes = 100

    let loop: SocketLoop
    let allocator = ByteBufferAllocator()
    let remoteAddress: SocketAddress?
    /// The `:scheme` of its requests.
    let scheme: String
    /// Frames out, flushed once per read or loop turn for every stream.
    private let output: H2FrameOutput
    private var context: ChannelHandlerContext? { output.context }
    private var streams: [HTTP2StreamID: H2ClientLane] = [:]
    private var lanes: [ObjectIdentifier: H2ClientLane] = [:]
    private var nextStreamID = HTTP2StreamID(1)
    /// The server sent GOAWAY (or the connection failed): no new stream starts here.
    private(set) var goingAway = false
    private(set) var closed = false
    private(set) var channelWritable = true
    /// Called once, when the connection has closed (the pool forgets it).
    var onClose: (() -> Void)?

    init(loop: SocketLoop, remoteAddress: SocketAddress?, scheme: String) {
        self.loop = loop
        self.output = H2FrameOutput(loop: loop)
        self.remoteAddress = remoteAddress
        self.scheme = scheme
    }

    /// The `NIOHTTP2Handler` in front: client mode, the header checks ours (we write the
    /// requests; answers are read by the HTTP/1.1 parser once translated).
    static func frameHandler(delegate: H2ClientConnection) -> NIOHTTP2Handler {
        var connection = NIOHTTP2Handler.ConnectionConfiguration()
        connection.headerBlockValidation = .disabled
        connection.initialSettings = [
            HTTP2Setting(parameter: .enablePush, value: 0),
            HTTP2Setting(parameter: .initialWindowSize, value: 65535),
            HTTP2Setting(parameter: .maxHeaderListSize, value: 64 * 1024),
        ]
        return NIOHTTP2Handler(mode: .client, frameDelegate: delegate, connectionConfiguration: connection)
    }

    /// Whether another lane may open here.
    var hasRoom: Bool { !goingAway && !closed && lanes.count < Self.maxLanes }

    /// A new lane on this connection (check ``hasRoom`` first).
    func makeLane() -> H2ClientLane {
        let lane = H2ClientLane(connection: self)
        lanes[ObjectIdentifier(lane)] = lane
        return lane
    }

    /// The next stream id, for a lane starting a request.
    func startStream(_ lane: H2ClientLane) -> HTTP2StreamID? {
        guard !goingAway, !closed else { return nil }
        let id = nextStreamID
        // Stream ids run out after 2^30 requests: the connection retires, a new one follows.
        guard Int32(id) < Int32.max - 2 else {
            goingAway = true
            return nil
        }
        nextStreamID = HTTP2StreamID(Int32(id) + 2)
        streams[id] = lane
        return id
    }

    func streamEnded(_ id: HTTP2StreamID) {
        streams[id] = nil
        closeIfDone()
    }

    func forget(_ lane: H2ClientLane) {
        lanes[ObjectIdentifier(lane)] = nil
        // No lane left (the pool closed its idle ones): nothing will use the connection.
        if lanes.isEmpty { goingAway = true }
        closeIfDone()
    }

    private func closeIfDone() {
        if goingAway, streams.isEmpty, !closed, let context {
            context.close(promise: nil)
        }
    }

    // MARK: channel events

    func handlerAdded(context: ChannelHandlerContext) { output.context = context }
    func handlerRemoved(context: ChannelHandlerContext) { output.context = nil }

    func channelActive(context: ChannelHandlerContext) {
        send(HTTP2Frame(streamID: .rootStream, payload: .windowUpdate(windowSizeIncrement: H2Connection.connectionWindow - 65535)), promise: nil)
        context.flush()
        context.fireChannelActive()
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        let frame = unwrapInboundIn(data)
        output.readStarted()
        switch frame.payload {
        case .headers(let headers):
            streams[frame.streamID]?.receiveHeaders(headers.headers, endStream: headers.endStream)
        case .data(let data):
            let length = data.data.readableBytes + (data.paddingBytes.map { $0 + 1 } ?? 0)
            output.received(length)
            guard let lane = streams[frame.streamID], case .byteBuffer(let bytes) = data.data else { return }
            lane.receiveData(bytes, flowControlled: length, endStream: data.endStream)
        case .goAway:
            // Streams past the server's last one are closed by NIO (refused, safe to retry);
            // the others finish; waiting lanes leave the pool.
            goingAway = true
            for lane in Array(lanes.values) where !lane.isBusy { lane.close(error: nil) }
            closeIfDone()
        default:
            break
        }
    }

    func channelReadComplete(context: ChannelHandlerContext) {
        output.readEnded()
        context.fireChannelReadComplete()
    }

    func userInboundEventTriggered(context: ChannelHandlerContext, event: Any) {
        if let closed = event as? StreamClosedEvent, closed.reason != nil, let lane = streams[closed.streamID] {
            streams[closed.streamID] = nil
            lane.streamReset()
        }
        context.fireUserInboundEventTriggered(event)
    }

    /// As on the server side: stream errors come here too; a connection error is known by
    /// the GOAWAY NIO writes for it.
    func errorCaught(context: ChannelHandlerContext, error: any Error) {
        if let failed = error as? NIOHTTP2Errors.StreamError, let lane = streams.removeValue(forKey: failed.streamID) {
            lane.streamReset()
        }
    }

    func wroteFrame(_ frame: HTTP2Frame) {
        guard case .goAway(_, let code, _) = frame.payload, code != .noError, !closed else { return }
        goingAway = true
        loop.enqueue { [self] in context?.close(promise: nil) }
    }

    func channelWritabilityChanged(context: ChannelHandlerContext) {
        channelWritable = context.channel.isWritable
        for lane in streams.values { lane.writabilityMayHaveChanged() }
        context.fireChannelWritabilityChanged()
    }

    func channelInactive(context: ChannelHandlerContext) {
        closed = true
        output.closed = true
        goingAway = true
        let all = Array(lanes.values)
        lanes = [:]
        streams = [:]
        for lane in all { lane.connectionClosed() }
        onClose?()
        onClose = nil
        context.fireChannelInactive()
    }

    // MARK: writing

    func send(_ frame: HTTP2Frame, promise: EventLoopPromise<Void>?) { output.send(frame, promise: promise) }

    func requestFlush() { output.requestFlush() }

    func enqueue(_ task: @escaping () -> Void) { loop.enqueue(task) }
}

@available(*, unavailable)
extension H2ClientConnection: Sendable {}
