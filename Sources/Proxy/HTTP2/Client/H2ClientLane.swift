import NIOCore
import NIOHPACK
import NIOHTTP2
import SocketLoop

/// One stream at a time on an upstream HTTP/2 connection, presented to an
/// `UpstreamConnectionHandler` as a kept-alive HTTP/1.1 connection: the request head it
/// writes becomes HEADERS (`te: trailers` added, for gRPC servers), its body DATA; the answer
/// comes back as an HTTP/1.1 response, chunked with its trailers unless it had a length.
/// The mirror of ``H2Lane``, the client side's.
final class H2ClientLane: ByteStream {
    private let connection: H2ClientConnection
    var delegate: (any ByteStreamDelegate)?
    private(set) var streamID: HTTP2StreamID?

    private enum ResponseSide {
        /// No final HEADERS yet.
        case waiting
        /// DATA as they come (a length was given).
        case raw
        /// DATA as chunks, trailers at the end.
        case chunked
        case done
    }

    /// The handler's request, cut into HEADERS and DATA.
    private var request = H1MessageCutter(maxHead: H2Connection.maxResponseHead, expectingHead: true)
    private var response = ResponseSide.waiting
    private(set) var isOpen = true
    /// Answer bytes held while the handler's reads are paused; request bytes queued.
    private let flow = H2LaneFlow()
    private var reportedWritable = true

    init(connection: H2ClientConnection) {
        self.connection = connection
    }

    var loop: SocketLoop { connection.loop }
    var remoteAddress: SocketAddress? { connection.remoteAddress }
    /// A request is in progress on the lane.
    var isBusy: Bool { streamID != nil }
    var isWritable: Bool { flow.isWritable(channelWritable: connection.channelWritable) }

    // MARK: the request (the handler writes HTTP/1.1)

    func write(_ bytes: ByteBuffer, promise: EventLoopPromise<Void>?) {
        guard isOpen else {
            promise?.fail(ChannelError.ioOnClosedChannel)
            return
        }
        var bytes = bytes
        var last: EventLoopPromise<Void>?
        while isOpen {
            let event: H1MessageCutter.Event?
            do {
                event = try request.next(&bytes)
            } catch {
                close(error: nil)
                break
            }
            guard let event else { break }
            switch event {
            case .head(let head):
                startRequest(head)
            case .data(let slice, let end):
                last = sendData(slice, end: end)
            case .end:
                // An HTTP/1.1 request's trailers are not passed on; the stream just ends.
                last = sendData(ByteBuffer(), end: true)
            }
        }
        if request.isDone, bytes.readableBytes > 0, isOpen {
            // Bytes past the request's end: the handler is out of step; this lane is not reused.
            close(error: nil)
        }
        if let promise {
            if let last { last.futureResult.cascade(to: promise) } else { promise.succeed() }
        }
        finishIfDone()
    }

    /// Sends HEADERS for the request `head`; the lane closes when it cannot.
    private func startRequest(_ head: ByteBuffer) {
        var parsed = RequestHead()
        let headers: HPACKHeaders? = head.withUnsafeReadableBytes { p in
            do {
                try HeadParser.parseRequest(p, into: &parsed, limits: H2Connection.responseHeadLimits)
            } catch {
                return nil
            }
            return Self.requestHeaders(p, parsed, scheme: connection.scheme)
        }
        guard let headers, let id = connection.startStream(self) else {
            close(error: nil)
            return
        }
        streamID = id
        response = .waiting
        flow.streamStarted()
        switch parsed.framing {
        case .contentLength(let n): request.framed(.length(n))
        case .chunked: request.framed(.chunked)
        case .none, .untilClose: request.framed(.none)
        }
        connection.send(HTTP2Frame(streamID: id, payload: .headers(.init(headers: headers, endStream: request.isDone))), promise: nil)
    }

    /// The handler's request head as a header block (RFC 9113 8.3.1): pseudo-fields from the
    /// request line and Host, the fields less those HTTP/2 forbids, and `te: trailers`.
    static func requestHeaders(_ p: UnsafeRawBufferPointer, _ head: RequestHead, scheme: String) -> HPACKHeaders {
        func text(_ r: ByteRange) -> String { String(decoding: UnsafeRawBufferPointer(rebasing: p[r.lower..<r.upper]), as: UTF8.self) }
        var headers = HPACKHeaders()
        headers.reserveCapacity(head.headers.fields.count + 5)
        headers.add(name: ":method", value: text(head.method))
        headers.add(name: ":scheme", value: scheme)
        if let host = head.headers.host { headers.add(name: ":authority", value: text(host)) }
        headers.add(name: ":path", value: text(head.target))
        for field in head.headers.fields {
            switch field.kind {
            case .connection, .transferEncoding, .hopByHop, .connectionNamed, .host:
                continue
            case .other, .contentLength, .xForwardedFor, .xForwardedProto, .xForwardedHost, .xRequestID, .traceparent:
                break
            }
            headers.add(name: text(field.name).lowercased(), value: text(field.value), indexing: .nonIndexable)
        }
        headers.add(name: "te", value: "trailers")
        return headers
    }

    private func sendData(_ bytes: ByteBuffer, end: Bool) -> EventLoopPromise<Void>? {
        guard let streamID else { return nil }
        let frame = HTTP2Frame(streamID: streamID, payload: .data(.init(data: .byteBuffer(bytes), endStream: end)))
        let promise = flow.track(bytes.readableBytes, on: connection.loop) { [self] in writabilityMayHaveChanged() }
        connection.send(frame, promise: promise)
        if promise != nil { writabilityMayHaveChanged() }
        return promise
    }

    func writabilityMayHaveChanged() {
        let now = isWritable
        guard now != reportedWritable, isOpen else { return }
        reportedWritable = now
        delegate?.streamWritabilityChanged(self)
    }

    func flush() { connection.requestFlush() }

    // MARK: the answer (frames in, HTTP/1.1 out)

    func receiveHeaders(_ headers: HPACKHeaders, endStream: Bool) {
        switch response {
        case .waiting:
            let status = headers.first(name: ":status").flatMap { Int($0) } ?? 0
            guard status >= 100, status < 1000 else {
                streamFailed()
                return
            }
            var out = connection.allocator.buffer(capacity: 256)
            out.writeStaticString("HTTP/1.1 ")
            out.writeString(String(status))
            out.writeStaticString(" ")
            out.writeString(DownstreamConnectionHandler.reason(status))
            out.writeStaticString("\r\n")
            guard let hasLength = Self.writeFields(headers, into: &out) else {
                streamFailed()
                return
            }
            if status < 200 {
                out.writeStaticString("\r\n")
                deliver(out)
                return
            }
            if endStream {
                if !hasLength, status != 204, status != 304 { out.writeStaticString("content-length: 0\r\n") }
                response = .done
            } else if hasLength {
                response = .raw
            } else {
                out.writeStaticString("transfer-encoding: chunked\r\n")
                response = .chunked
            }
            out.writeStaticString("\r\n")
            deliver(out)
        case .raw:
            response = .done
        case .chunked:
            // Trailers: the last chunk's trailer section.
            var out = ByteBuffer(string: "0\r\n")
            guard Self.writeFields(headers, into: &out) != nil else {
                streamFailed()
                return
            }
            out.writeStaticString("\r\n")
            response = .done
            deliver(out)
        case .done:
            return
        }
        finishIfDone()
    }

    /// An answer's fields (pseudo-fields, `transfer-encoding` and `connection` left out) as
    /// HTTP/1.1 lines; whether they gave a length, or nil when a value holds CR, LF or NUL
    /// (it would end the line early: the stream fails instead).
    private static func writeFields(_ headers: HPACKHeaders, into out: inout ByteBuffer) -> Bool? {
        var hasLength = false
        for (name, value, _) in headers where name.utf8.first != UInt8(ascii: ":") {
            guard !value.utf8.contains(where: { $0 == HTTPBytes.cr || $0 == HTTPBytes.lf || $0 == 0 }) else { return nil }
            if name == "content-length" { hasLength = true }
            if name == "transfer-encoding" || name == "connection" { continue }
            out.writeString(name)
            out.writeStaticString(": ")
            out.writeString(value)
            out.writeStaticString("\r\n")
        }
        return hasLength
    }

    func receiveData(_ data: ByteBuffer, flowControlled: Int, endStream: Bool) {
        switch response {
        case .raw:
            if endStream { response = .done }
            deliver(data, body: flowControlled)
        case .chunked:
            var out = connection.allocator.buffer(capacity: data.readableBytes + 16)
            if data.readableBytes > 0 {
                out.writeString(String(data.readableBytes, radix: 16))
                out.writeStaticString("\r\n")
                out.writeImmutableBuffer(data)
                out.writeStaticString("\r\n")
            }
            if endStream {
                out.writeStaticString("0\r\n\r\n")
                response = .done
            }
            deliver(out, body: flowControlled)
        case .waiting, .done:
            return
        }
        finishIfDone()
    }

    private func deliver(_ bytes: ByteBuffer, body: Int = 0) {
        credit(flow.deliver(bytes, body: body, from: self, to: delegate))
    }

    /// Gives the stream's window back (what the handler took), while the answer still comes.
    private func credit(_ bytes: Int?) {
        guard let bytes, let streamID, isOpen else { return }
        if case .done = response { return }
        connection.send(HTTP2Frame(streamID: streamID, payload: .windowUpdate(windowSizeIncrement: bytes)), promise: nil)
        connection.requestFlush()
    }

    func pauseReads() { flow.pause() }

    func resumeReads() {
        flow.resume(on: connection.loop) { [self] in
            guard isOpen, let (bytes, body) = flow.takeHeld() else { return }
            credit(flow.hand(bytes, body: body, from: self, to: delegate))
        }
    }

    /// Both ways done: the lane waits for the next request, as a kept-alive connection does.
    /// An answer that came before the request ended cuts the request (RFC 9113 8.1).
    private func finishIfDone() {
        guard case .done = response, let streamID else { return }
        if request.isDone {
            self.streamID = nil
            request.expectHead()
            connection.streamEnded(streamID)
            return
        }
        connection.send(HTTP2Frame(streamID: streamID, payload: .rstStream(.cancel)), promise: nil)
        connection.requestFlush()
        self.streamID = nil
        connection.streamEnded(streamID)
        request.finish()
        connection.enqueue { [self] in close(error: nil) }
    }

    // MARK: closing

    func close(error: SocketError?) {
        guard isOpen else { return }
        if let streamID {
            connection.send(HTTP2Frame(streamID: streamID, payload: .rstStream(.cancel)), promise: nil)
            connection.requestFlush()
            self.streamID = nil
            connection.streamEnded(streamID)
        }
        shut(error: error)
    }

    func closeAfterFlush(lingering: TimeAmount?, maxDrained: Int) { close(error: nil) }

    /// The server reset the stream, or it failed: the handler hears of a closed connection.
    func streamReset() {
        guard isOpen else { return }
        streamID = nil
        shut(error: nil)
    }

    /// An answer HTTP/1.1 cannot carry: the stream is reset and the lane closes.
    private func streamFailed() {
        if let streamID {
            connection.send(HTTP2Frame(streamID: streamID, payload: .rstStream(.protocolError)), promise: nil)
            connection.requestFlush()
            self.streamID = nil
            connection.streamEnded(streamID)
        }
        shut(error: nil)
    }

    func connectionClosed() {
        guard isOpen else { return }
        streamID = nil
        shut(error: nil)
    }

    private func shut(error: SocketError?) {
        guard isOpen else { return }
        isOpen = false
        flow.dropHeld()
        connection.forget(self)
        let delegate = self.delegate
        self.delegate = nil
        delegate?.streamClosed(self, error: error)
    }
}

@available(*, unavailable)
extension H2ClientLane: Sendable {}
