// Hot path: per request, no allocation beyond the response head.
import NIOCore
import Scripting

extension DownstreamConnectionHandler {
    /// Largest upstream response head accepted; beyond it the upstream is broken (`502`).
    static let maxResponseHeadBytes = 64 * 1024
    /// Bodies up to this size that arrive with their head are copied into the head's buffer.
    static let coalesceLimit = 4096

    func upstreamRead(_ buffer: ByteBuffer) {
        var buffer = buffer
        while buffer.readableBytes > 0 {
            switch responsePhase {
            case .head:
                guard readResponseHead(&buffer) else { return }
            case .collecting:
                responseRest!.writeBuffer(&buffer)
                continueResponseWait()
                return
            case .body:
                forwardResponseBody(&buffer)
            case .done:
                // Bytes after a complete response: the upstream is out of step; don't reuse it.
                upstreamReusable = false
                return
            }
        }
    }

    /// Accumulates and handles the response head; false when more bytes are needed or it failed.
    private func readResponseHead(_ buffer: inout ByteBuffer) -> Bool {
        if responseHeadBuffer != nil {
            responseHeadBuffer!.writeBuffer(&buffer)
            buffer = responseHeadBuffer!
            responseHeadBuffer = nil
        }
        guard let end = buffer.withUnsafeReadableBytes({ HeadParser.findEnd($0, from: 0) }) else {
            if buffer.readableBytes > Self.maxResponseHeadBytes {
                upstreamFailed(.responseHeadTooLarge)
            } else {
                responseHeadBuffer = buffer
                buffer.moveReaderIndex(to: buffer.writerIndex)
            }
            return false
        }
        let head = buffer.readSlice(length: end)!
        let limits = HeadLimits(maxHeaderBytes: Self.maxResponseHeadBytes, maxHeaderCount: 1000, maxURIBytes: 0)
        let failed: Bool = head.withUnsafeReadableBytes { p in
            do throws(HeadError) {
                try HeadParser.parseResponse(p, into: &response, limits: limits)
                return false
            } catch {
                return true
            }
        }
        if failed {
            upstreamFailed(.invalidResponse)
            return false
        }
        upstreamHead = nil  // a response started: never retry this request
        let status = response.status
        if status >= 200 { tryAnswered(status: status) }
        if status >= 100, status < 200 {
            if status == 101 {
                upstreamFailed(.switchedProtocols)
                return false
            }
            // Interim responses (100 Continue, 103 Early Hints) go to the client as they came.
            if request.minorVersion >= 1 { sendToClient(makeClientHead(head, framing: .none)) }
            return true
        }

        let framing: Body
        if request.isHEAD || status == 204 || status == 304 {
            framing = .none
        } else if response.headers.chunked {
            framing = .chunked(ChunkedDecoder())
        } else if let length = response.headers.contentLength {
            framing = length > 0 ? .length(remaining: length) : .none
        } else {
            framing = .untilClose
        }
        responseBody = framing
        if !response.keepAlive { upstreamReusable = false }
        if case .untilClose = framing { upstreamReusable = false }
        if laterResponse, lua == nil, reborrow() == nil {
            upstreamReusable = false
            upstreamFailed(.noLuaState)
            return false
        }
        if let lua, let route, lua.has(.response, policy: route.policy) {
            responseHeadKept = head
            // The script may read the body: it waits here, in `responseRest`, until the phase ends.
            responseRest = buffer
            buffer = ByteBuffer()
            guard runResponsePhase(lua, route: route) else { return false }
            if responsePhase == .collecting { return false }
            buffer = responseRest!
            responseRest = nil
        }
        return sendResponseHead(head, framing: framing, &buffer)
    }

    /// Writes the client's response head (and a body a script set, or a small body that came
    /// with the head); what is left of `buffer` is then body to forward.
    func sendResponseHead(_ head: ByteBuffer, framing: Body, _ buffer: inout ByteBuffer) -> Bool {
        responseStarted = true
        responsePhase = .body
        if let body = responseEdits.body {
            let sent: Body
            if case .none = framing { sent = .none } else { sent = .length(remaining: body.readableBytes) }
            if case .none = sent {
                sendToClient(makeClientHead(head, framing: .none))
            } else {
                sendToClient(makeClientHead(head, framing: sent, body: body))
            }
            responseBody = .length(remaining: 0)
            // Bytes past the body the script read: the upstream is out of step.
            if buffer.readableBytes > 0 { upstreamReusable = false }
            buffer.moveReaderIndex(to: buffer.writerIndex)
            responseFinished()
            return true
        }
        // A small body that came with the head goes out in the head's buffer: one write
        // through the pipeline instead of two (measured: a few percent per request).
        if case .length(let length) = framing, length <= Self.coalesceLimit, buffer.readableBytes >= length {
            let out = makeClientHead(head, framing: framing, body: buffer.readSlice(length: length)!)
            responseBody = .length(remaining: 0)
            sendToClient(out)
            responseFinished()
            return true
        }
        sendToClient(makeClientHead(head, framing: framing))
        if case .none = framing { responseFinished() }
        return true
    }

    private func forwardResponseBody(_ buffer: inout ByteBuffer) {
        switch responseBody {
        case .none:
            responseFinished()
        case .length(let remaining):
            let take = min(remaining, buffer.readableBytes)
            sendToClient(buffer.readSlice(length: take)!)
            responseBody = .length(remaining: remaining - take)
            if remaining == take { responseFinished() }
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
                        responseBody = .chunked(decoder)
                        responseFinished()
                        return
                    }
                }
                responseBody = .chunked(decoder)
            } catch {
                // The response is already under way: all that is left is to cut it.
                forceClose()
                buffer.moveReaderIndex(to: buffer.writerIndex)
            }
        }
    }

    private func writeClientBody(_ slice: ByteBuffer) {
        if responseChunkedOut {
            sendToClient(chunkHeader(slice.readableBytes))
            sendToClient(slice)
            sendToClient(crlf)
        } else {
            sendToClient(slice)
        }
    }

    func responseFinished() {
        responsePhase = .done
        if responseChunkedOut {
            sendToClient(lastChunk)
        }
        if requestBodyDone {
            finishExchange()
        } else {
            // The origin answered before reading the whole body (an early 413, say). What is
            // left of the body cannot be told from a next request: close both sides after this.
            upstreamReusable = false
            closeAfterResponse = true
            finishExchange()
        }
    }

    /// Both directions of the exchange are complete: return the upstream connection and get
    /// ready for the client's next request (or close).
    func finishExchange() {
        recordRequest(status: sentStatus)
        // The upstream's read-complete (which flushes) reaches us only while we hold it.
        io.flush()
        if requestHead != nil { endScript() }
        if let upstream {
            self.upstream = nil
            if upstreamReusable, requestBodyDone, let targetPool {
                targetPool.release(upstream)
            } else {
                upstream.close()
            }
        }
        targetPool = nil
        route = nil
        generation = nil
        upstreamHead = nil
        if closeAfterResponse || !keepAliveClient {
            closeAfterFlush()
            return
        }
        state = .idle
        lastActivity = .now()
        // The request's buffers go back to the worker: an idle connection keeps none.
        worker.takeBack(&upstreamHeadOut)
        worker.takeBack(&clientHeadOut)
        forwardedHead = nil
        worker.takeBack(&forwardedHeadStorage)
        if requestHead == nil { worker.takeBack(&requestHeadStorage) }
        if inbound != nil { processInbound() }
        updateReads()
    }

    func closeAfterFlush() {
        recordRequest(status: sentStatus)
        if requestHead != nil { endScript() }
        state = .closing
        // The client may still be sending (a refused head or body): drained, not reset.
        io.closeAfterFlush(linger: true)
    }

    func upstreamClosed(error: Error?, reused: Bool) {
        upstream = nil
        switch responsePhase {
        case .collecting:
            if case .untilClose = responseBody {
                upstreamEnded = true
                continueResponseWait()
            } else {
                upstreamFailed(.upstreamClosed)
            }
        case .head:
            // A pooled connection the origin closed as we reused it (its keep-alive timeout):
            // send the request again on a new connection, once, if it is idempotent and had no
            // body (RFC 9110 9.2.2; nginx does the same and never retries a POST by default).
            if reused, request.isIdempotent, let pool = targetPool, upstreamHead != nil, !retriedStale, requestBodyDone,
                responseHeadBuffer == nil
            {
                retriedStale = true
                state = .connecting
                connectUpstream(pool)
                return
            }
            tryFailed(.upstreamClosed)
        case .body:
            if case .untilClose = responseBody {
                responseFinished()
            } else {
                forceClose()
            }
        case .done:
            break
        }
    }

    func upstreamTimedOut() {
        upstream = nil
        upstreamReusable = false
        if responsePhase == .head {
            if let balancer { worker.metrics.upstream(.timeout, upstream: balancer.upstream.metricID) }
            tryFailed(.upstreamTimeout)
        } else if responsePhase == .collecting {
            upstreamFailed(.upstreamTimeout)
        } else {
            forceClose()
        }
    }

    /// The upstream failed after the try was answered (or in a way no other try would mend).
    func upstreamFailed(_ error: ProxyError) {
        if let upstream {
            self.upstream = nil
            upstream.close()
        }
        respondError(error)
    }

    /// The response head as the client gets it: hop-by-hop fields removed, framing re-stated.
    /// `body`, if given, follows the head in the same buffer (written before the buffer is
    /// shared, so no copy-on-write).
    private func makeClientHead(_ head: ByteBuffer, framing: Body, body: ByteBuffer? = nil) -> ByteBuffer {
        var out = ByteBuffer()
        swap(&out, &clientHeadOut)  // `out` is then the only reference, so clear() reuses storage
        if out.capacity == 0 { out = worker.lendScratch() }
        let estimate = head.readableBytes + 128 + requestID.readableBytes + responseEdits.headers.bytes
        out.clear(minimumCapacity: estimate + (body?.readableBytes ?? 0))
        defer { clientHeadOut = out }
        head.withUnsafeReadableBytes { p in
            out.writeHead(estimate: estimate) { w in writeClientHead(&w, p, framing: framing) }
        }
        if var body { out.writeBuffer(&body) }
        return out
    }

    @inline(__always)
    private func writeClientHead(_ w: inout HeadWriter, _ p: UnsafeRawBufferPointer, framing: Body) {
        responseChunkedOut = false
        let h = response.headers
        let scripted = !responseEdits.isEmpty
        // We speak HTTP/1.1 whatever the origin spoke; the status code and reason stay.
        if let status = responseEdits.status {
            w.put("HTTP/1.1 ")
            w.decimal(status)
            w.put(byte: HTTPBytes.sp)
            var reason = Self.reason(status)
            reason.withUTF8 { w.put(UnsafeRawBufferPointer($0)) }
            sentStatus = status
        } else {
            w.put("HTTP/1.1")
            w.put(p, ByteRange(8, response.statusLine.upper))
            sentStatus = response.status
        }
        w.put("\r\n")
        var sawRequestID = false
        for field in h.fields {
            if scripted, field.kind != .contentLength, responseEdits.headers.drops(p, field.name.lower, field.name.count) {
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
            if request.minorVersion >= 1 {
                responseChunkedOut = true
                w.put("Transfer-Encoding: chunked\r\n")
            } else {
                closeAfterResponse = true  // an HTTP/1.0 client reads to the close
            }
        case .none:
            break
        }
        if scripted {
            responseEdits.headers.write(into: &w)
            if responseEdits.headers.entry(Self.requestIDName) != nil { sawRequestID = true }
        }
        if !sawRequestID {
            w.put("X-Request-Id: ")
            w.put(requestID)
            w.put("\r\n")
        }
        if closeAfterResponse || !keepAliveClient {
            w.put("Connection: close\r\n")
        } else if request.minorVersion == 0 {
            w.put("Connection: keep-alive\r\n")
        }
        w.put("\r\n")
    }
}
