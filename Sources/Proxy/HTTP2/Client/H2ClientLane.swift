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

    private enum RequestSide {
        case head(ByteBuffer?)
        case length(remaining: Int)
        case chunked(ChunkedDecoder)
        case ended
    }

    private enum ResponseSide {
        /// No final HEADERS yet.
        case waiting
        /// DATA as they come (a length was given).
        case raw
        /// DATA as chunks, trailers at the end.
        case chunked
        case done
    }

    private var request = RequestSide.head(nil)
    private var response = ResponseSide.waiting
    private(set) var isOpen = true
    /// Answer bytes held while the handler's reads are paused; request bytes queued.
    private let flow = H2LaneFlow()
    /// Body bytes the handler took since the last stream WINDOW_UPDATE.
    private var consumed = 0
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
        while bytes.readableBytes > 0, isOpen {
            switch request {
            case .head(var soFar):
                if soFar == nil { soFar = bytes } else { soFar!.writeBuffer(&bytes) }
                bytes.moveReaderIndex(to: bytes.writerIndex)
                guard let rest = startRequest(&soFar!) else {
                    if case .head = request, isOpen { request = .head(soFar) }
                    break
                }
                bytes = rest
            case .length(let remaining):
                let take = min(remaining, bytes.readableBytes)
                let slice = bytes.readSlice(length: take)!
                request = remaining == take ? .ended : .length(remaining: remaining - take)
                last = sendData(slice, end: remaining == take)
            case .chunked(var decoder):
                do {
                    guard let event = try decoder.next(&bytes) else {
                        request = .chunked(decoder)
                        break
                    }
                    switch event {
                    case .data(let slice):
                        request = .chunked(decoder)
                        last = sendData(slice, end: false)
                    case .end:
                        request = .ended
                        last = sendData(ByteBuffer(), end: true)
                    }
                } catch {
                    close(error: nil)
                }
            case .ended:
                // Bytes past the request's end: the handler is out of step; this lane is not reused.
                bytes.moveReaderIndex(to: bytes.writerIndex)
                close(error: nil)
            }
        }
        if let promise {
            if let last { last.futureResult.cascade(to: promise) } else { promise.succeed() }
        }
        finishIfDone()
    }

    /// Sends HEADERS once the head is complete; returns the bytes after it.
    private func startRequest(_ soFar: inout ByteBuffer) -> ByteBuffer? {
        let end: Int? = soFar.withUnsafeReadableBytes { HeadParser.findEnd($0, from: 0) }
        guard let end else {
            if soFar.readableBytes > H2Connection.maxResponseHead { close(error: nil) }
            return nil
        }
        var head = RequestHead()
        let headers: HPACKHeaders? = soFar.withUnsafeReadableBytes { p in
            let bytes = UnsafeRawBufferPointer(rebasing: p[0..<end])
            do {
                try HeadParser.parseRequest(bytes, into: &head, limits: H2Connection.responseHeadLimits)
            } catch {
                return nil
            }
            return Self.requestHeaders(bytes, head, scheme: connection.scheme)
        }
        guard let headers, let id = connection.startStream(self) else {
            close(error: nil)
            return nil
        }
        soFar.moveReaderIndex(forwardBy: end)
        streamID = id
        response = .waiting
        consumed = 0
        flow.streamStarted()
        let endStream: Bool
        switch head.framing {
        case .contentLength(let n) where n > 0:
            request = .length(remaining: n)
            endStream = false
        case .chunked:
            request = .chunked(ChunkedDecoder())
            endStream = false
        case .none, .contentLength, .untilClose:
            request = .ended
            endStream = true
        }
        connection.send(HTTP2Frame(streamID: id, payload: .headers(.init(headers: headers, endStream: endStream))), promise: nil)
        return soFar
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
        if !flow.holdIfNeeded(bytes, body: body) { hand(bytes, body: body) }
    }

    private func hand(_ bytes: ByteBuffer, body: Int) {
        guard let delegate else { return }
        delegate.streamRead(self, bytes)
        delegate.streamReadComplete(self)
        guard body > 0, let streamID, isOpen else { return }
        consumed += body
        guard consumed >= H2Connection.streamCreditThreshold else { return }
        if case .done = response {
            consumed = 0
            return
        }
        connection.send(HTTP2Frame(streamID: streamID, payload: .windowUpdate(windowSizeIncrement: consumed)), promise: nil)
        connection.requestFlush()
        consumed = 0
    }

    func pauseReads() { flow.pause() }

    func resumeReads() {
        flow.resume(on: connection.loop) { [self] in
            guard isOpen, let (bytes, body) = flow.takeHeld() else { return }
            hand(bytes, body: body)
        }
    }

    /// Both ways done: the lane waits for the next request, as a kept-alive connection does.
    /// An answer that came before the request ended cuts the request (RFC 9113 8.1).
    private func finishIfDone() {
        guard case .done = response, let streamID else { return }
        if case .ended = request {
            self.streamID = nil
            request = .head(nil)
            connection.streamEnded(streamID)
            return
        }
        connection.send(HTTP2Frame(streamID: streamID, payload: .rstStream(.cancel)), promise: nil)
        connection.requestFlush()
        self.streamID = nil
        connection.streamEnded(streamID)
        request = .ended
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
