// Hot path: per request, no allocation beyond the response head.
import NIOCore
import Scripting
import Telemetry

extension DownstreamConnectionHandler {
    /// Largest upstream response head accepted; beyond it the upstream is broken (`502`).
    static let maxResponseHeadBytes = 64 * 1024
    /// Bodies up to this size that arrive with their head are copied into the head's buffer.
    static let coalesceLimit = 4096

    func upstreamRead(_ buffer: ByteBuffer) {
        var buffer = buffer
        let current = exchange
        // Once the response is done the exchange may end inside this loop (and the next
        // request's begin): what is left of the read is not its response.
        while buffer.readableBytes > 0, exchange === current {
            switch lifecycle.response {
            case .head:
                guard readResponseHead(&buffer) else { return }
            case .collecting:
                exchange.policy.responseRest!.writeBuffer(&buffer)
                continueResponseWait()
                return
            case .body:
                forwardResponseBody(&buffer)
            case .done:
                // Bytes after a complete response: the upstream is out of step; don't reuse it.
                exchange.upstreamReusable = false
                return
            }
        }
    }

    /// Accumulates and handles the response head; false when more bytes are needed or it failed.
    private func readResponseHead(_ buffer: inout ByteBuffer) -> Bool {
        if exchange.responseHeadBuffer != nil {
            exchange.responseHeadBuffer!.writeBuffer(&buffer)
            buffer = exchange.responseHeadBuffer!
            exchange.responseHeadBuffer = nil
        }
        guard let end = buffer.withUnsafeReadableBytes({ HeadParser.findEnd($0, from: 0) }) else {
            if buffer.readableBytes > Self.maxResponseHeadBytes {
                upstreamFailed(.responseHeadTooLarge)
            } else {
                exchange.responseHeadBuffer = buffer
                buffer.moveReaderIndex(to: buffer.writerIndex)
            }
            return false
        }
        let head = buffer.readSlice(length: end)!
        let limits = HeadLimits(maxHeaderBytes: Self.maxResponseHeadBytes, maxHeaderCount: 1000, maxURIBytes: 0)
        let failed: Bool = head.withUnsafeReadableBytes { p in
            do throws(HeadError) {
                try HeadParser.parseResponse(p, into: &exchange.response, limits: limits)
                return false
            } catch {
                return true
            }
        }
        if failed {
            upstreamFailed(.invalidResponse)
            return false
        }
        exchange.attempt.upstreamHead = nil  // a response started: never retry this request
        let status = exchange.response.status
        if status >= 200 { tryAnswered(status: status) }
        if status >= 100, status < 200 {
            if status == 101 {
                // Only to the protocol the request asked for and the route passes.
                let agreed = exchange.upgrading && exchange.route.map { route in
                    head.withUnsafeReadableBytes { p in exchange.response.headers.upgrade.map { route.allowsUpgrade(p, $0) } ?? false }
                } == true
                guard agreed else {
                    upstreamFailed(.switchedProtocols)
                    return false
                }
                startTunnel(head, &buffer)
                return false
            }
            // Interim responses (100 Continue, 103 Early Hints) go to the client as they came.
            if exchange.request.minorVersion >= 1 { sendToClient(makeClientHead(head, framing: .none)) }
            return true
        }

        let framing: Body
        if exchange.request.isHEAD || status == 204 || status == 304 {
            framing = .none
        } else if exchange.response.headers.chunked {
            framing = .chunked(ChunkedDecoder())
        } else if let length = exchange.response.headers.contentLength {
            framing = length > 0 ? .length(remaining: length) : .none
        } else {
            framing = .untilClose
        }
        exchange.responseBody = framing
        if !exchange.response.keepAlive { exchange.upstreamReusable = false }
        if case .untilClose = framing { exchange.upstreamReusable = false }
        if exchange.policy.used, let route = exchange.route {
            switch exchange.policy.wantsResponsePhase(route) {
            case nil:
                exchange.upstreamReusable = false
                upstreamFailed(.noLuaState)
                return false
            case true?:
                exchange.policy.responseHead = head
                // The script may read the body: it waits here, in `responseRest`, until the phase ends.
                exchange.policy.responseRest = buffer
                buffer = ByteBuffer()
                guard runResponsePhase(route) else { return false }
                if lifecycle.response == .collecting { return false }
                buffer = exchange.policy.responseRest!
                exchange.policy.responseRest = nil
            case false?:
                break
            }
        }
        return sendResponseHead(head, framing: framing, &buffer)
    }

    /// Writes the client's response head (and a body a script set, or a small body that came
    /// with the head); what is left of `buffer` is then body to forward.
    func sendResponseHead(_ head: ByteBuffer, framing: Body, _ buffer: inout ByteBuffer) -> Bool {
        lifecycle.responseHeadSent()
        if let body = exchange.policy.responseEdits.body {
            let sent: Body
            if case .none = framing { sent = .none } else { sent = .length(remaining: body.readableBytes) }
            if case .none = sent {
                sendToClient(makeClientHead(head, framing: .none))
            } else {
                sendToClient(makeClientHead(head, framing: sent, body: body))
            }
            exchange.responseBody = .length(remaining: 0)
            // Bytes past the body the script read: the upstream is out of step.
            if buffer.readableBytes > 0 { exchange.upstreamReusable = false }
            buffer.moveReaderIndex(to: buffer.writerIndex)
            responseFinished()
            return true
        }
        // A small body that came with the head goes out in the head's buffer: one write
        // through the pipeline instead of two (measured: a few percent per request).
        if case .length(let length) = framing, length <= Self.coalesceLimit, buffer.readableBytes >= length {
            let out = makeClientHead(head, framing: framing, body: buffer.readSlice(length: length)!)
            exchange.responseBody = .length(remaining: 0)
            sendToClient(out)
            finishedWith(buffer)
            return true
        }
        sendToClient(makeClientHead(head, framing: framing))
        if case .none = framing { finishedWith(buffer) }
        return true
    }

    private func forwardResponseBody(_ buffer: inout ByteBuffer) {
        switch exchange.responseBody {
        case .none:
            responseFinished()
        case .length(let remaining):
            let take = min(remaining, buffer.readableBytes)
            sendToClient(buffer.readSlice(length: take)!)
            exchange.responseBody = .length(remaining: remaining - take)
            if remaining == take { finishedWith(buffer) }
        case .untilClose:
            writeClientBody(buffer)
            buffer.moveReaderIndex(to: buffer.writerIndex)
        case .chunked(var decoder):
            do {
                while let event = try decoder.next(&buffer) {
                    switch event {
                    case .data(let slice):
                        writeClientBody(slice)
                    case .end:
                        exchange.responseBody = .chunked(decoder)
                        finishedWith(buffer)
                        return
                    }
                }
                exchange.responseBody = .chunked(decoder)
            } catch {
                // The response is already under way: all that is left is to cut it.
                forceClose()
                buffer.moveReaderIndex(to: buffer.writerIndex)
            }
        }
    }

    private func writeClientBody(_ slice: ByteBuffer) {
        if exchange.responseChunkedOut {
            sendToClient(chunkHeader(slice.readableBytes))
            sendToClient(slice)
            sendToClient(crlf)
        } else {
            sendToClient(slice)
        }
    }

    /// The response ended inside `rest`'s read: bytes after it mean the upstream is out of
    /// step, and its connection must not go back to the pool.
    private func finishedWith(_ rest: ByteBuffer) {
        if rest.readableBytes > 0 { exchange.upstreamReusable = false }
        responseFinished()
    }

    func responseFinished() {
        if exchange.responseChunkedOut {
            // The upstream's trailers go on (gRPC's status is one); rare, so only then a buffer.
            if case .chunked(let decoder) = exchange.responseBody, let raw = decoder.trailers,
                let trailers = ChunkedDecoder.forwardableTrailers(raw)
            {
                var end = ByteBuffer(string: "0\r\n")
                end.writeImmutableBuffer(trailers)
                end.writeStaticString("\r\n")
                sendToClient(end)
            } else {
                sendToClient(lastChunk)
            }
        }
        let (next, clean) = lifecycle.responseFinished()
        if !clean { exchange.upstreamReusable = false }
        finishExchange(next)
    }

    func upstreamClosed(error: Error?, reused: Bool) {
        exchange.attempt.upstream = nil
        var untilClose = false
        if case .untilClose = exchange.responseBody { untilClose = true }
        let canResend = exchange.attempt.pool != nil && exchange.attempt.upstreamHead != nil && exchange.responseHeadBuffer == nil
        switch lifecycle.upstreamClosed(reused: reused, canResend: canResend, untilClose: untilClose) {
        case .reconnect:
            connectUpstream(exchange.attempt.pool!)
        case .tryFailed(let error):
            tryFailed(error)
        case .failed(let error):
            upstreamFailed(error)
        case .responseEnded:
            responseFinished()
        case .collectedToClose:
            exchange.policy.upstreamEnded = true
            continueResponseWait()
        case .cut:
            forceClose()
        case .nothing:
            break
        }
    }

    func upstreamTimedOut() {
        exchange.attempt.upstream = nil
        exchange.upstreamReusable = false
        switch lifecycle.upstreamTimedOut() {
        case .tryFailed(let error):
            if let balancer = exchange.attempt.balancer { worker.metrics.upstream(.timeout, upstream: balancer.upstream.metricID) }
            tryFailed(error)
        case .failed(let error):
            upstreamFailed(error)
        case .reconnect, .responseEnded, .collectedToClose, .cut, .nothing:
            forceClose()
        }
    }

    /// The upstream failed after the try was answered (or in a way no other try would mend).
    func upstreamFailed(_ error: ProxyError) {
        if let upstream = exchange.attempt.upstream {
            self.exchange.attempt.upstream = nil
            upstream.close()
        }
        respondError(error)
    }

    /// The response head as the client gets it: hop-by-hop fields removed, framing re-stated.
    /// `body`, if given, follows the head in the same buffer (written before the buffer is
    /// shared, so no copy-on-write).
    func makeClientHead(_ head: ByteBuffer, framing: Body, body: ByteBuffer? = nil) -> ByteBuffer {
        var out = ByteBuffer()
        swap(&out, &exchange.clientHeadOut)  // `out` is then the only reference, so clear() reuses storage
        if out.capacity == 0 { out = Exchange.newHeadBuffer() }
        let estimate = head.readableBytes + 128 + exchange.requestID.readableBytes + exchange.policy.responseEdits.headers.bytes
        out.clear(minimumCapacity: estimate + (body?.readableBytes ?? 0))
        defer { exchange.clientHeadOut = out }
        head.withUnsafeReadableBytes { p in
            out.writeHead(estimate: estimate) { w in writeClientHead(&w, p, framing: framing) }
        }
        if var body { out.writeBuffer(&body) }
        return out
    }

    @inline(__always)
    private func writeClientHead(_ w: inout HeadWriter, _ p: UnsafeRawBufferPointer, framing: Body) {
        exchange.responseChunkedOut = false
        let h = exchange.response.headers
        let scripted = !exchange.policy.responseEdits.isEmpty
        // We speak HTTP/1.1 whatever the origin spoke; the status code and reason stay.
        if let status = exchange.policy.responseEdits.status {
            w.put("HTTP/1.1 ")
            w.decimal(status)
            w.put(byte: HTTPBytes.sp)
            var reason = Self.reason(status)
            reason.withUTF8 { w.put(UnsafeRawBufferPointer($0)) }
            exchange.sentStatus = status
        } else {
            w.put("HTTP/1.1")
            w.put(p, ByteRange(8, exchange.response.statusLine.upper))
            exchange.sentStatus = exchange.response.status
        }
        w.put("\r\n")
        var sawRequestID = false
        for field in h.fields {
            if scripted, field.kind != .contentLength, exchange.policy.responseEdits.headers.drops(p, field.name.lower, field.name.count) {
                continue
            }
            switch field.kind {
            case .other, .host, .xForwardedFor, .xForwardedHost, .xForwardedProto, .traceparent:
                w.put(p, field.line)
            case .xRequestID:
                sawRequestID = true
                w.put(p, field.line)
            case .contentLength:
                // HEAD, 204 and 304 keep the origin's length: it describes a body not sent.
                if case .none = framing { w.put(p, field.line) }
            case .transferEncoding, .connection, .hopByHop, .connectionNamed:
                break
            }
        }
        switch framing {
        case .length(let length):
            w.put("Content-Length: ")
            w.decimal(length)
            w.put("\r\n")
        case .chunked, .untilClose:
            if exchange.request.minorVersion >= 1 {
                exchange.responseChunkedOut = true
                w.put("Transfer-Encoding: chunked\r\n")
            } else {
                lifecycle.closeAfterThisResponse()  // an HTTP/1.0 client reads to the close
            }
        case .none:
            break
        }
        if scripted {
            exchange.policy.responseEdits.headers.write(into: &w)
            if exchange.policy.responseEdits.headers.contains("x-request-id") { sawRequestID = true }
        }
        if !sawRequestID {
            w.put("X-Request-Id: ")
            w.put(exchange.requestID)
            w.put("\r\n")
        }
        if exchange.response.status == 101, let upgrade = h.upgrade {
            // Only a tunnel's switch gets here (`startTunnel`).
            w.put("Connection: upgrade\r\nUpgrade: ")
            w.put(p, upgrade)
            w.put("\r\n")
        } else if lifecycle.closesAfterResponse {
            w.put("Connection: close\r\n")
        } else if exchange.request.minorVersion == 0 {
            w.put("Connection: keep-alive\r\n")
        }
        w.put("\r\n")
    }
}
