// Hot path: every HTTP/2 request passes through here twice (its head in, its answer out).
import NIOCore
import NIOHPACK
import SocketLoop
import TLS

/// One HTTP/2 stream at a time, presented to a `DownstreamConnectionHandler` as an HTTP/1.1
/// connection: the stream's HEADERS become a request head, its DATA the body (chunk-framed
/// when no length was given); what the handler answers is parsed back into HEADERS and DATA.
///
/// Why a bridge rather than a second request path: every behaviour the gateway has (routes,
/// policies, plugins, limits, retries, metrics, logs) lives in the one handler, and an
/// HTTP/2 stream gets all of it, as HAProxy 1.8 first served HTTP/2 through its HTTP/1
/// engine. The head is written once and parsed once more by the same strict parser, so a
/// stream cannot smuggle anything an HTTP/1 client could not: the lane frames the body itself.
///
/// A lane outlives its stream: once the answer is complete and the request ended, the
/// handler waits as a kept-alive connection does, and the lane serves the connection's next
/// stream (``H2Connection`` keeps the idle ones).
final class H2Lane: ByteStream {
    /// Owns the lanes; a lane is dropped when its connection closes, which breaks the cycle.
    private let connection: H2Connection
    var delegate: (any ByteStreamDelegate)?
    /// The stream served now; nil between streams.
    private(set) var streamID: UInt32?
    /// The stream's answer as it goes out: its window and what waits for more.
    var output = H2StreamOutput()
    /// What the client may still send on the stream.
    private var receiveWindow = 0

    private enum RequestSide {
        /// The body's DATA are forwarded as they are: `content-length` said how many bytes are
        /// left, and the DATA must come to exactly that (else the stream is reset: a body the
        /// handler did not frame would reach it as a next request).
        case raw(remaining: Int)
        /// No length: each DATA becomes a chunk.
        case chunked
        /// END_STREAM came (delivered, or held while reads are paused).
        case ended
    }

    private var request = RequestSide.ended
    /// The handler's answer, cut into HEADERS and DATA.
    private var response = H1MessageCutter(maxHead: H2Connection.maxResponseHead, expectingHead: false)
    private var isHEAD = false
    /// The answer under way is a gRPC one (`content-type: application/grpc...`): cut short,
    /// it ends with a gRPC status rather than a reset.
    private var grpcAnswer = false
    private(set) var isOpen = true
    /// Request bytes held while the handler's reads are paused; answer bytes queued.
    private let flow = H2LaneFlow()
    private var reportedWritable = true
    /// The handler closed after its answer, which still waits for window.
    private var closeWhenSent = false

    init(connection: H2Connection) {
        self.connection = connection
    }

    var loop: EventLoop { connection.loop }
    var remoteAddress: SocketAddress? { connection.remoteAddress }
    var tls: TLSStream? { connection.tls }

    // MARK: request side (from the connection)

    /// Starts serving stream `id` with the request `headers`. Returns the error to reset the
    /// stream with when the head cannot be an HTTP/1.1 request.
    func begin(_ id: UInt32, headers: HPACKHeaders, endStream: Bool, sendWindow: Int) -> H2ErrorCode? {
        var head = connection.allocator.buffer(capacity: 512)
        guard let (isHEAD, length) = H2RequestHead.write(headers, endStream: endStream, into: &head) else { return .protocolError }
        self.isHEAD = isHEAD
        grpcAnswer = false
        streamID = id
        output = H2StreamOutput(sendWindow: sendWindow)
        receiveWindow = H2Connection.streamWindow
        request = endStream ? .ended : (length.map { .raw(remaining: $0) } ?? .chunked)
        response.expectHead()
        flow.streamStarted()
        if endStream {
            deliver(head)
        } else {
            // Held to the end of this read: DATA that came with the HEADERS reach the handler
            // with the head, so a body that is already whole (a gRPC unary call's) may be
            // sent again to another target if the first try fails.
            flow.hold(head, body: 0)
            connection.gather(self)
        }
        return nil
    }

    /// The read that brought the stream's HEADERS is over: what was held goes to the handler.
    func endGathering() {
        guard isOpen, let (bytes, body) = flow.takeHeld() else { return }
        credit(flow.hand(bytes, body: body, from: self, to: delegate))
    }

    /// DATA for the current stream; `flowControlled` counts its padding too, all of which
    /// the stream's window gets back once the handler has taken the data.
    func receive(_ data: ByteBuffer, flowControlled: Int, endStream: Bool) {
        switch request {
        case .raw(let remaining):
            let left = remaining - data.readableBytes
            guard left >= 0, !endStream || left == 0 else {
                resetStream(.protocolError)
                return
            }
            request = endStream ? .ended : .raw(remaining: left)
            if data.readableBytes > 0 || flowControlled > 0 { deliver(data, body: flowControlled) }
        case .chunked:
            var framed = connection.allocator.buffer(capacity: data.readableBytes + 16)
            if data.readableBytes > 0 {
                framed.writeString(String(data.readableBytes, radix: 16))
                framed.writeStaticString("\r\n")
                framed.writeImmutableBuffer(data)
                framed.writeStaticString("\r\n")
            }
            if endStream {
                request = .ended
                framed.writeStaticString("0\r\n\r\n")
            }
            deliver(framed, body: flowControlled)
        case .ended:
            return
        }
        if endStream { finishIfDone() }
    }

    /// Trailers (a second HEADERS) end the request; an HTTP/1.1 upstream hears only the end.
    func receiveTrailers() {
        switch request {
        case .raw(let remaining):
            guard remaining == 0 else {
                resetStream(.protocolError)
                return
            }
            request = .ended
        case .chunked:
            request = .ended
            deliver(ByteBuffer(string: "0\r\n\r\n"))
        case .ended:
            return
        }
        finishIfDone()
    }

    /// Hands `bytes` to the handler, or holds them while its reads are paused; `body` is
    /// how much of the stream's window they hold.
    private func deliver(_ bytes: ByteBuffer, body: Int = 0) {
        credit(flow.deliver(bytes, body: body, from: self, to: delegate))
    }

    /// Gives the stream's window back (what the handler took), while the request still sends.
    private func credit(_ bytes: Int?) {
        guard let bytes, let streamID, isOpen, !requestEnded else { return }
        receiveWindow += bytes
        connection.writeWindowUpdate(streamID, bytes)
    }

    /// Takes `n` bytes of the stream's receive window; false when the client sent more than
    /// it was given (RFC 9113 6.9.1).
    func takeReceiveWindow(_ n: Int) -> Bool {
        guard n <= receiveWindow else { return false }
        receiveWindow -= n
        return true
    }

    /// Grows (or, by SETTINGS, shrinks) the stream's send window; false past 2^31-1.
    func growSendWindow(_ delta: Int) -> Bool {
        output.sendWindow += delta
        return output.sendWindow <= H2Wire.maxWindow
    }

    /// The request has ended (END_STREAM or trailers came): the stream is half-closed (remote).
    var requestEnded: Bool {
        if case .ended = request { return true }
        return false
    }

    /// The handler has written its whole answer (some may still wait for window).
    var isAnswered: Bool { response.isDone }

    // MARK: ByteStream (the handler's side)

    var isWritable: Bool { connection.socketWritable && output.queuedBytes < H2Connection.laneHighWatermark }

    func pauseReads() { flow.pause() }

    func resumeReads() { flow.resume(on: connection.loop) { [self] in endGathering() } }

    func write(_ bytes: ByteBuffer, promise: EventLoopPromise<Void>?) {
        var bytes = bytes
        guard isOpen, streamID != nil else {
            promise?.fail(ChannelError.ioOnClosedChannel)
            return
        }
        while true {
            let event: H1MessageCutter.Event?
            do {
                event = try response.next(&bytes)
            } catch {
                // A head past the bound, or chunked framing the handler broke (a bug).
                resetStream(.internalError)
                promise?.fail(ChannelError.ioOnClosedChannel)
                return
            }
            guard let event else { break }
            switch event {
            case .head(let head):
                guard sendHead(head) else {
                    promise?.fail(ChannelError.ioOnClosedChannel)
                    return
                }
            case .data(let slice, let end):
                sendData(slice, end: end)
            case .end(let trailers):
                if let raw = trailers, let block = H2ResponseHead.trailers(raw) {
                    // Trailers end the stream as a last HEADERS (RFC 9113 8.1).
                    connection.writeTrailers(self, block: block)
                } else {
                    sendData(ByteBuffer(), end: true)
                }
            }
        }
        // Bytes past the answer's end are dropped, as a socket's reader would never see them.
        promise?.succeed()
        if response.isDone { finishIfDone() }
    }

    /// Sends the answer's HEADERS; false when the head is refused (the stream is reset).
    private func sendHead(_ head: ByteBuffer) -> Bool {
        guard let streamID else { return false }
        var parsed = ResponseHead()
        var block = connection.allocator.buffer(capacity: 256)
        let result: (H2ResponseHead.Body, Bool)? = head.withUnsafeReadableBytes { p in
            do {
                try HeadParser.parseResponse(p, into: &parsed, limits: H2Connection.responseHeadLimits)
            } catch {
                return nil
            }
            return H2ResponseHead.write(p, parsed, isHEAD: isHEAD, into: &block)
        }
        guard let (body, grpc) = result else {
            resetStream(.internalError)
            return false
        }
        grpcAnswer = grpc
        if parsed.status < 200 {
            response.expectHead()
        } else {
            response.framed(body)
        }
        connection.writeHeaders(streamID, block: block, endStream: response.isDone)
        return true
    }

    private func sendData(_ bytes: ByteBuffer, end: Bool) {
        connection.writeData(self, bytes, end: end)
        if output.isBlocked { writabilityMayHaveChanged() }
    }

    /// Tells the handler when ``isWritable`` changed (the connection calls it too).
    func writabilityMayHaveChanged() {
        let now = isWritable
        guard now != reportedWritable, isOpen else { return }
        reportedWritable = now
        delegate?.streamWritabilityChanged(self)
    }

    func flush() { connection.requestFlush() }

    /// What waited for window has gone out.
    func outputSent() {
        writabilityMayHaveChanged()
        finishIfDone()
        if closeWhenSent {
            closeWhenSent = false
            connection.laneClosed(self)
            connection.enqueue { [self] in shut(error: nil) }
        }
    }

    /// The answer is complete: once the request has ended too and the last of it is out,
    /// the lane is free. A request still sending is cut short (RFC 9113 8.1: an answer may
    /// come before the request ends).
    private func finishIfDone() {
        guard response.isDone, let streamID, !output.isBlocked else { return }
        switch request {
        case .ended:
            self.streamID = nil
            connection.laneFinished(self)
        case .raw, .chunked:
            connection.writeReset(streamID, .noError)
            self.streamID = nil
            connection.laneFinished(self, reusable: false)
            // The handler still expects the rest of the body: it closes, later (it may be
            // inside its own write).
            connection.enqueue { [self] in close(error: nil) }
        }
    }

    // MARK: closing

    func close(error: SocketError?) {
        guard isOpen else { return }
        if let streamID {
            if output.isBlocked {
                // The handler is gone; what still waits for window would never be complete.
                connection.writeReset(streamID, .internalError)
            } else if response.isUntilClose {
                sendData(ByteBuffer(), end: true)
                response.finish()
                if case .ended = request {} else { connection.writeReset(streamID, .noError) }
            } else if grpcAnswer, !response.isHeadPending, !isAnswered {
                // A gRPC answer cut short (its upstream gone): trailers with UNAVAILABLE, which
                // a client may retry, rather than a reset it would read as INTERNAL.
                var block = ByteBuffer()
                HPACKWriter.writeField(name: "grpc-status", value: String(GRPCStatus.unavailable), into: &block)
                HPACKWriter.writeField(name: "grpc-message", value: "the upstream ended the call early", into: &block)
                connection.writeHeaders(streamID, block: block, endStream: true)
                response.finish()
                if case .ended = request {} else { connection.writeReset(streamID, .noError) }
            } else if !isAnswered {
                connection.writeReset(streamID, .internalError)
            }
            self.streamID = nil
            output.clear()
            connection.laneFinished(self, reusable: false)
        }
        shut(error: error)
    }

    /// The answer is written (the handler closes after it): the lane closes, later, as a
    /// socket does once its bytes are out. An answer still incomplete is cut as by `close`.
    func closeAfterFlush(lingering: TimeAmount?, maxDrained: Int) {
        guard isOpen else { return }
        if streamID != nil {
            guard isAnswered, output.isBlocked else {
                close(error: nil)
                return
            }
            // The whole answer is written but some waits for window: closed once it is out.
            closeWhenSent = true
            return
        }
        connection.laneClosed(self)
        connection.enqueue { [self] in shut(error: nil) }
    }

    /// The peer reset the stream (the connection has forgotten it): the handler hears of a
    /// closed connection.
    func streamReset() {
        guard isOpen, streamID != nil else { return }
        streamID = nil
        output.clear()
        shut(error: nil)
    }

    /// The connection closed under the lane.
    func connectionClosed() {
        guard isOpen else { return }
        streamID = nil
        shut(error: nil)
    }

    private func shut(error: SocketError?) {
        guard isOpen else { return }
        isOpen = false
        flow.dropHeld()
        connection.laneClosed(self)
        let delegate = self.delegate
        self.delegate = nil
        delegate?.streamClosed(self, error: error)
    }

    /// Resets the stream from this side (the client broke the protocol on it, or the
    /// handler's answer cannot be sent).
    func reset(_ code: H2ErrorCode) { resetStream(code) }

    private func resetStream(_ code: H2ErrorCode) {
        guard let streamID else { return }
        connection.writeReset(streamID, code)
        self.streamID = nil
        output.clear()
        connection.laneFinished(self, reusable: false)
        connection.enqueue { [self] in shut(error: nil) }
    }
}

/// A stream's answer on its way out: the window the client gave it, and what waits for more
/// (DATA, whether they end the stream, and trailers after them).
struct H2StreamOutput {
    var sendWindow = 0
    var queued: ByteBuffer?
    var queuedEnd = false
    var trailers: ByteBuffer?

    init(sendWindow: Int = 0) {
        self.sendWindow = sendWindow
    }

    var isBlocked: Bool { queued != nil }
    var queuedBytes: Int { queued?.readableBytes ?? 0 }

    mutating func queue(_ bytes: ByteBuffer, end: Bool) {
        if queued == nil { queued = bytes } else { queued!.writeImmutableBuffer(bytes) }
        queuedEnd = end
    }

    /// What waits is dropped (the stream is over, or all of it went); the window stays: a
    /// new stream starts with a fresh output.
    mutating func clear() {
        queued = nil
        queuedEnd = false
        trailers = nil
    }
}

@available(*, unavailable)
extension H2Lane: Sendable {}
