// Hot path: per request, no allocation beyond the upstream head.
import Telemetry
import NIOCore

extension DownstreamConnectionHandler {
    /// Looks for a complete head in `inbound` and starts the request it opens.
    func processInbound() {
        guard var buffer = inbound, buffer.readableBytes > 0 else {
            inbound = nil
            return
        }
        if state == .idle {
            state = .head
            requestStart = lastActivity
            headScanned = 0
        }
        let limits = worker.generation.shared.limits
        let end = buffer.withUnsafeReadableBytes { HeadParser.findEnd($0, from: max(0, headScanned - 3)) }
        guard let end else {
            // The head is incomplete: the request deadline (not the idle one) applies now.
            if headScanned == 0 { armTimer() }
            headScanned = buffer.readableBytes
            if buffer.readableBytes > limits.maxHeaderBytes {
                inbound = nil
                let lineDone = buffer.withUnsafeReadableBytes { HeadParser.requestLineEnd($0) } != nil
                respondError(lineDone ? .headerTooLarge : .uriTooLong)
            } else {
                inbound = buffer
            }
            return
        }
        if end > limits.maxHeaderBytes {
            inbound = nil
            let lineEnd = buffer.withUnsafeReadableBytes { HeadParser.requestLineEnd($0) } ?? end
            // A target far past its own limit is the reason; otherwise the head as a whole.
            respondError(lineEnd > limits.maxURIBytes + 32 ? .uriTooLong : .headerTooLarge)
            return
        }
        let head = buffer.readSlice(length: end)!
        inbound = buffer.readableBytes > 0 ? buffer : nil
        headScanned = 0
        startRequest(head)
    }

    private func startRequest(_ head: ByteBuffer) {
        let generation = worker.generation
        self.generation = generation
        requestSerial &+= 1
        requestOpen = true
        metricMethod = 9
        bytesSent = 0
        upstreamNanoseconds = 0
        luaNanoseconds = 0
        if !logFields.isEmpty { logFields.removeAll(keepingCapacity: true) }
        logRequestLine.clear()
        retriedStale = false
        finishTry()
        forwardedHead = nil
        responseStarted = false
        responsePhase = .head
        responseHeadBuffer = nil
        upstreamReusable = true
        requestID.clear()

        let parsed: HeadError? = head.withUnsafeReadableBytes { p in
            do throws(HeadError) {
                try HeadParser.parseRequest(p, into: &request, limits: generation.shared.limits)
                return nil
            } catch {
                return error
            }
        }
        keepAliveClient = request.keepAlive && !worker.draining
        if let parsed {
            worker.requestIDs.next(into: &requestID)
            respondError(.head(parsed))
            return
        }

        var headError: ProxyError?
        let route: CompiledRoute? = head.withUnsafeReadableBytes { p in
            setRequestID(p)
            trace = TraceContext(p, request.headers.traceparent, random: &worker.requestIDs)
            if let export = generation.shared.traceExport {
                // A caller's decision stands; a new trace is kept at the configured ratio.
                if !trace.continued { trace.flags = trace.traceLow <= export.sampleBelow ? 1 : 0 }
                traced = trace.flags & 1 == 1
            } else {
                traced = false
            }
            if worker.accessLog.isOn || traced {
                logRequestLine.clear()
                logRequestLine.writeBytes(UnsafeRawBufferPointer(rebasing: p[request.method.lower..<request.method.upper]))
                logRequestLine.writeInteger(UInt8(ascii: " "))
                logRequestLine.writeBytes(UnsafeRawBufferPointer(rebasing: p[request.target.lower..<request.target.upper]))
            }
            metricMethod = MethodLabel.index(UnsafeRawBufferPointer(rebasing: p[request.method.lower..<request.method.upper]))
            if p[request.target.lower] != UInt8(ascii: "/") {
                headError = .absolutePathRequired
                return nil
            }
            if PathSafety.hasDotSegment(p, request.path) {
                headError = .dotSegments
                return nil
            }
            return generation.shared.match(p, request)
        }
        if let headError {
            respondError(headError)
            return
        }
        switch request.framing {
        case .none, .untilClose:
            requestBody = .none
            requestBodyDone = true
        case .contentLength(let length):
            requestBody = .length(remaining: length)
            requestBodyDone = false
        case .chunked:
            requestBody = .chunked(ChunkedDecoder())
            requestBodyDone = false
        }
        requestBodyBytes = 0

        var chosen = route
        if !generation.shared.routers.isEmpty, let router = generation.shared.routers[listener.name] {
            switch runRouter(head, router: router) {
            case .route(let picked): chosen = picked
            case .fallback: break
            case .answered: return
            }
        }
        guard let route = chosen else {
            respondError(.noRoute)
            return
        }
        self.route = route
        if case .contentLength(let length) = request.framing, route.maxBodyBytes > 0, length > route.maxBodyBytes {
            respondError(.bodyTooLarge)
            return
        }

        if route.policy >= 0 {
            if lua == nil {  // else a router ran: its state, head and changes carry on
                requestHead = keep(head, in: &requestHeadStorage)
                edits.reset()
                responseEdits.reset()
            }
            state = .policy
            armTimer()
            startPolicy(route)
            return
        }
        if lua != nil { releaseScript() }
        forward(head, route: route)
    }

    /// A copy of `head` in the connection's own reused storage, for a head kept past this read.
    /// Keeping a slice of the read instead pins the loop's receive buffer, and the next read
    /// (the upstream's answer) then allocates a new 16 KB one: callgrind, one malloc and free
    /// and about 1K instructions a proxied request, against a copy of the head's bytes.
    func keep(_ head: ByteBuffer, in storage: inout ByteBuffer) -> ByteBuffer {
        if storage.capacity == 0 { storage = worker.lendScratch() }
        storage.clear()
        storage.writeImmutableBuffer(head)
        return storage
    }

    /// Sends the request to its upstream (the route's, or the one a script chose).
    func forward(_ head: ByteBuffer, route: CompiledRoute) {
        guard let generation else { return }
        let balancer = generation.balancers[edits.upstream ?? route.upstream]
        self.balancer = balancer
        triedTargets = 0
        tries = 0
        hashKey = edits.hashKey ?? requestHashKey(head, balancer.upstream.balancer)
        forwardedHead = keep(head, in: &forwardedHeadStorage)
        retryableBody = requestBodyDone
        // The time the request's bytes were read: close enough, and no clock read per request.
        balancer.countRequest(lastActivity)
        startTry(route: route)
    }

    func connectUpstream(_ pool: TargetPool) {
        let serial = requestSerial
        pool.connect().assumeIsolatedUnsafeUnchecked().whenComplete { [self] result in
            switch result {
            case .success(let connection):
                guard state == .connecting, requestSerial == serial else {
                    pool.release(connection)
                    return
                }
                begin(connection)
            case .failure(let error):
                guard state == .connecting, requestSerial == serial else { return }
                if let balancer { worker.metrics.upstream(.connectError, upstream: balancer.upstream.metricID) }
                // The pool reports why, as a ProxyError; anything else is a failure to connect.
                tryFailed(error as? ProxyError ?? .unreachable)
            }
        }
    }

    func begin(_ connection: UpstreamConnectionHandler) {
        guard let targetPool else { return }
        upstream = connection
        connection.attach(self, readTimeout: edits.tryTimeout ?? balancer?.upstream.tryTimeout ?? targetPool.settings.readTimeout, now: lastActivity)
        if !downstreamWritable { connection.setReadsPaused(true) }
        state = .proxying
        connection.write(upstreamHead!)
        if !requestBodyDone, var body = inbound {
            inbound = nil
            forwardRequestBody(&body)
            if body.readableBytes > 0 { inbound = body }
        }
        connection.flush()
        updateReads()
    }

    /// Sends request body bytes upstream, re-framing chunked bodies and enforcing the size limit.
    func forwardRequestBody(_ buffer: inout ByteBuffer) {
        guard let upstream else { return }
        upstreamUnflushed = true
        switch requestBody {
        case .none, .untilClose:
            requestBodyDone = true
        case .length(let remaining):
            let take = min(remaining, buffer.readableBytes)
            upstream.write(buffer.readSlice(length: take)!)
            requestBody = .length(remaining: remaining - take)
            if remaining == take { requestBodyFinished() }
        case .chunked(var decoder):
            let limit = route?.maxBodyBytes ?? 0
            do {
                while let event = try decoder.next(&buffer) {
                    switch event {
                    case .data(let slice):
                        requestBodyBytes += slice.readableBytes
                        if limit > 0, requestBodyBytes > limit {
                            respondError(.bodyTooLarge)
                            return
                        }
                        writeChunk(slice, to: upstream)
                    case .end:
                        upstream.write(lastChunk)
                        requestBody = .chunked(decoder)
                        requestBodyFinished()
                        return
                    }
                }
                requestBody = .chunked(decoder)
            } catch {
                respondError(.malformedChunkedBody)
            }
        }
    }

    private func requestBodyFinished() {
        requestBodyDone = true
        upstreamHead = nil
        if responsePhase == .done { finishExchange() }
    }

    func writeChunk(_ slice: ByteBuffer, to upstream: UpstreamConnectionHandler) {
        upstream.write(chunkHeader(slice.readableBytes))
        upstream.write(slice)
        upstream.write(crlf)
    }

    /// `size-in-hex CRLF`, the line before a chunk's data (RFC 9112 7.1).
    func chunkHeader(_ size: Int) -> ByteBuffer {
        var header = allocator.buffer(capacity: 18)
        header.writeString(String(size, radix: 16))
        header.writeStaticString("\r\n")
        return header
    }

    /// Keeps a client's `X-Request-Id` if it is safe to echo (visible ASCII, no quotes, at
    /// most 128 bytes), else makes one.
    private func setRequestID(_ p: UnsafeRawBufferPointer) {
        if let id = request.headers.requestID, id.count > 0, id.count <= 128 {
            var ok = true
            for i in id.lower..<id.upper {
                let c = p[i]
                if c <= 0x20 || c >= 0x7F || c == UInt8(ascii: "\"") || c == UInt8(ascii: "\\") {
                    ok = false
                    break
                }
            }
            if ok {
                requestID.writeBytes(UnsafeRawBufferPointer(start: p.baseAddress! + id.lower, count: id.count))
                return
            }
        }
        worker.requestIDs.next(into: &requestID)
    }

    /// The request head as the upstream gets it: hop-by-hop fields removed, `X-Forwarded-*`
    /// and `X-Request-Id` set, `Host` as the route says, the body's framing re-stated.
    func makeUpstreamHead(_ head: ByteBuffer, route: CompiledRoute, pool: TargetPool) -> ByteBuffer {
        var out = ByteBuffer()
        swap(&out, &upstreamHeadOut)  // `out` is then the only reference, so clear() reuses storage
        if out.capacity == 0 { out = worker.lendScratch() }
        // Field by field: `edits.changesHead` copied the whole struct (8 reference counts) per request.
        let scripted = !edits.headers.isEmpty || edits.path != nil || edits.query != nil || edits.body != nil
        var estimate = head.readableBytes + 256 + clientAddress.count + requestID.readableBytes + pool.hostHeader.count
        if scripted { estimate += edits.headers.bytes + (edits.path?.count ?? 0) + (edits.query?.count ?? 0) }
        out.clear(minimumCapacity: estimate + (edits.body?.readableBytes ?? 0))
        defer { upstreamHeadOut = out }
        head.withUnsafeReadableBytes { p in
            out.writeHead(estimate: estimate) { w in
                writeUpstreamHead(&w, p, route: route, pool: pool, scripted: scripted)
            }
        }
        // A body a script read or set travels with the head (it is whole, and bounded).
        if var body = edits.body {
            out.writeBuffer(&body)
            return out
        }
        // A small body already here travels in the head's buffer: one write, and the kept
        // head is then the whole request, so a stale-connection retry can resend it.
        if case .length(let length) = requestBody, length <= Self.coalesceLimit, var rest = inbound, rest.readableBytes >= length {
            var body = rest.readSlice(length: length)!
            inbound = rest.readableBytes > 0 ? rest : nil
            out.writeBuffer(&body)
            requestBody = .length(remaining: 0)
            requestBodyDone = true
        }
        return out
    }
}

extension DownstreamConnectionHandler {
    @inline(__always)
    private func writeUpstreamHead(_ w: inout HeadWriter, _ p: UnsafeRawBufferPointer, route: CompiledRoute, pool: TargetPool, scripted: Bool) {
        let h = request.headers
        w.put(p, request.method)
        w.put(byte: HTTPBytes.sp)
        // Without a script's path or query, the target is copied whole (query included).
        let targetEnd = scripted ? request.path.upper : request.target.upper
        if let path = edits.path {
            w.put(path)
        } else if route.stripPrefix, !route.exact {
            var rest = request.target.lower + route.path.count
            // A prefix that ends in "/" keeps it in the rewritten path.
            if route.path.last == UInt8(ascii: "/") { rest -= 1 }
            if rest >= targetEnd || p[rest] != UInt8(ascii: "/") { w.put(byte: UInt8(ascii: "/")) }
            if rest < targetEnd { w.put(p, rest, targetEnd - rest) }
        } else {
            w.put(p, request.target.lower, targetEnd - request.target.lower)
        }
        if scripted {
            if let query = edits.query {
                if !query.isEmpty {
                    w.put(byte: UInt8(ascii: "?"))
                    w.put(query)
                }
            } else if request.path.upper < request.target.upper {
                w.put(p, request.path.upper, request.target.upper - request.path.upper)
            }
        }
        w.put(" HTTP/1.1\r\nHost: ")
        let hostEdit = scripted ? edits.headers.entry(Self.hostName)?.values.first : nil
        if let hostEdit {
            w.put(hostEdit)
        } else {
            switch route.hostHeader {
            case .passthrough:
                if let host = h.host { w.put(p, host) } else { w.put(pool.hostHeader) }
            case .target:
                w.put(pool.hostHeader)
            case .fixed(let value):
                w.put(value)
            }
        }
        w.put("\r\n")

        var forwardedFor = false
        for field in h.fields {
            switch field.kind {
            case .other:
                if scripted, edits.headers.drops(p, field.name.lower, field.name.count) { continue }
                w.put(p, field.line)
            case .xForwardedFor:
                // nginx's $proxy_add_x_forwarded_for: earlier hops first, this client last.
                w.put(forwardedFor ? ", " : "X-Forwarded-For: ")
                w.put(p, field.value)
                forwardedFor = true
            case .host, .contentLength, .transferEncoding, .connection, .hopByHop, .xForwardedProto,
                .xForwardedHost, .xRequestID, .connectionNamed, .traceparent:
                break
            }
        }
        w.put(forwardedFor ? ", " : "X-Forwarded-For: ")
        w.put(clientAddress)
        w.put("\r\nX-Forwarded-Proto: http\r\n")
        if let host = h.host {
            w.put("X-Forwarded-Host: ")
            w.put(p, host)
            w.put("\r\n")
        }
        w.put("X-Request-Id: ")
        w.put(requestID)
        w.put("\r\n")
        trace.write(into: &w)
        if scripted { edits.headers.write(into: &w, skipping: Self.hostName) }
        if scripted, let body = edits.body {
            w.put("Content-Length: ")
            w.decimal(body.readableBytes)
            w.put("\r\n")
        } else {
            switch request.framing {
            case .contentLength(let length):
                w.put("Content-Length: ")
                w.decimal(length)
                w.put("\r\n")
            case .chunked:
                w.put("Transfer-Encoding: chunked\r\n")
            case .none, .untilClose:
                break
            }
        }
        w.put("\r\n")
    }
}

extension DownstreamConnectionHandler {
    static let hostName: [UInt8] = Array("host".utf8)
}

/// Refuses `.` and `..` path segments (also percent-encoded): a prefix route must not be
/// escaped by `/public/../admin`, which the origin would resolve to `/admin`.
enum PathSafety {
    static func hasDotSegment(_ p: UnsafeRawBufferPointer, _ path: ByteRange) -> Bool {
        var i = path.lower
        let end = path.upper
        while i < end {
            // At a segment start (just after "/").
            if p[i] == UInt8(ascii: "/") {
                var j = i + 1
                var dots = 0
                while j < end, p[j] != UInt8(ascii: "/") {
                    if p[j] == UInt8(ascii: "."), dots < 3 {
                        dots += 1
                        j += 1
                    } else if p[j] == UInt8(ascii: "%"), j + 2 < end, p[j + 1] == UInt8(ascii: "2"),
                        HTTPBytes.lower(p[j + 2]) == UInt8(ascii: "e")
                    {
                        dots += 1
                        j += 3
                    } else {
                        dots = 99
                        break
                    }
                }
                if dots == 1 || dots == 2 { return true }
                i = j
            } else {
                i += 1
            }
        }
        return false
    }
}
