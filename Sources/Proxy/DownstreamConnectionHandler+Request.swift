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
        if lifecycle.headBytes(now: lastActivity) { headScanned = 0 }
        let limits = worker.generation.shared.limits
        let end = buffer.withUnsafeReadableBytes { HeadParser.findEnd($0, from: max(0, headScanned - 3)) }
        guard let end else {
            // The head is incomplete: the request deadline (not the idle one) applies now.
            if headScanned == 0 { armTimer() }
            headScanned = buffer.readableBytes
            if buffer.readableBytes > limits.maxHeaderBytes {
                inbound = nil
                let lineDone = buffer.withUnsafeReadableBytes { HeadParser.requestLineEnd($0) } != nil
                lifecycle.headRefused()
                beginExchange()
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
            lifecycle.headRefused()
            beginExchange()
            respondError(lineEnd > limits.maxURIBytes + 32 ? .uriTooLong : .headerTooLarge)
            return
        }
        let head = buffer.readSlice(length: end)!
        inbound = buffer.readableBytes > 0 ? buffer : nil
        headScanned = 0
        startRequest(head)
    }

    private func startRequest(_ head: ByteBuffer) {
        beginExchange()
        exchange.open = true
        // The shared part alone: copying the whole generation retained and released its balancers too.
        let shared = exchange.generation!.shared

        let parsed: HeadError? = head.withUnsafeReadableBytes { p in
            do throws(HeadError) {
                try HeadParser.parseRequest(p, into: &exchange.request, limits: shared.limits)
                return nil
            } catch {
                return error
            }
        }
        let bodyDone: Bool
        switch exchange.request.framing {
        case .none, .untilClose: bodyDone = true
        case .contentLength, .chunked: bodyDone = parsed != nil
        }
        lifecycle.headParsed(
            keepAlive: exchange.request.keepAlive, bodyDone: bodyDone, idempotent: exchange.request.isIdempotent,
            expectContinue: exchange.request.expectContinue && exchange.request.minorVersion >= 1, draining: worker.draining)
        if let parsed {
            worker.requestIDs.next(into: &exchange.requestID)
            respondError(.head(parsed))
            return
        }

        var headError: ProxyError?
        let route: CompiledRoute? = head.withUnsafeReadableBytes { p in
            setRequestID(p)
            exchange.trace = TraceContext(p, exchange.request.headers.traceparent, random: &worker.requestIDs)
            if let export = shared.traceExport {
                // A caller's decision stands; a new trace is kept at the configured ratio.
                if !exchange.trace.continued { exchange.trace.flags = exchange.trace.traceLow <= export.sampleBelow ? 1 : 0 }
                exchange.traced = exchange.trace.flags & 1 == 1
            } else {
                exchange.traced = false
            }
            if worker.accessLog.isOn || exchange.traced {
                exchange.record.logRequestLine.clear()
                exchange.record.logRequestLine.writeBytes(UnsafeRawBufferPointer(rebasing: p[exchange.request.method.lower..<exchange.request.method.upper]))
                exchange.record.logRequestLine.writeInteger(UInt8(ascii: " "))
                exchange.record.logRequestLine.writeBytes(UnsafeRawBufferPointer(rebasing: p[exchange.request.target.lower..<exchange.request.target.upper]))
            }
            exchange.metricMethod = MethodLabel.index(UnsafeRawBufferPointer(rebasing: p[exchange.request.method.lower..<exchange.request.method.upper]))
            if p[exchange.request.target.lower] != UInt8(ascii: "/") {
                headError = .absolutePathRequired
                return nil
            }
            if PathSafety.hasDotSegment(p, exchange.request.path) {
                headError = .dotSegments
                return nil
            }
            return shared.match(p, exchange.request)
        }
        if let headError {
            respondError(headError)
            return
        }
        switch exchange.request.framing {
        case .none, .untilClose:
            exchange.requestBody = .none
        case .contentLength(let length):
            exchange.requestBody = .length(remaining: length)
        case .chunked:
            exchange.requestBody = .chunked(ChunkedDecoder())
        }
        exchange.requestBodyBytes = 0

        var chosen = route
        if !shared.routers.isEmpty, let router = shared.routers[listener.name] {
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
        self.exchange.route = route
        if case .contentLength(let length) = exchange.request.framing, route.maxBodyBytes > 0, length > route.maxBodyBytes {
            respondError(.bodyTooLarge)
            return
        }

        if route.policy >= 0 {
            if exchange.policy.lua == nil {  // else a router ran: its state, head and changes carry on
                exchange.policy.used = true
                exchange.policy.requestHead = keep(head, in: &exchange.requestHeadStorage)
            }
            lifecycle.policyStarted()
            armTimer()
            startPolicy(route)
            return
        }
        if exchange.policy.lua != nil { exchange.policy.release() }
        forward(head, route: route)
    }

    /// A copy of `head` in the connection's own reused storage, for a head kept past this read.
    /// Keeping a slice of the read instead pins the loop's receive buffer, and the next read
    /// (the upstream's answer) then allocates a new 16 KB one: callgrind, one malloc and free
    /// and about 1K instructions a proxied request, against a copy of the head's bytes.
    func keep(_ head: ByteBuffer, in storage: inout ByteBuffer) -> ByteBuffer {
        if storage.capacity == 0 { storage = Exchange.newHeadBuffer() }
        storage.clear()
        storage.writeImmutableBuffer(head)
        return storage
    }

    /// Sends the request to its upstream (the route's, or the one a script chose).
    func forward(_ head: ByteBuffer, route: CompiledRoute) {
        // The balancer alone, not a copy of the whole generation (two more retains and releases).
        guard let balancer = exchange.generation?.balancer(exchange.policy.edits.upstream ?? route.upstream, on: worker) else { return }
        self.exchange.attempt.balancer = balancer
        exchange.attempt.tried = 0
        exchange.attempt.count = 0
        exchange.attempt.hashKey = exchange.policy.edits.hashKey ?? requestHashKey(head, balancer.upstream.balancer)
        exchange.attempt.forwardedHead = keep(head, in: &exchange.forwardedHeadStorage)
        exchange.attempt.retryableBody = lifecycle.requestBodyDone
        // The time the request's bytes were read: close enough, and no clock read per request.
        balancer.countRequest(lastActivity)
        startTry(route: route)
    }

    func connectUpstream(_ pool: TargetPool) {
        let serial = requestSerial
        pool.connect().assumeIsolatedUnsafeUnchecked().whenComplete { [self] result in
            switch result {
            case .success(let connection):
                guard lifecycle.awaitingConnection, requestSerial == serial else {
                    pool.release(connection)
                    return
                }
                begin(connection)
            case .failure(let error):
                guard lifecycle.awaitingConnection, requestSerial == serial else { return }
                if let balancer = exchange.attempt.balancer { worker.metrics.upstream(.connectError, upstream: balancer.upstream.metricID) }
                // The pool reports why, as a ProxyError; anything else is a failure to connect.
                tryFailed(error as? ProxyError ?? .unreachable)
            }
        }
    }

    func begin(_ connection: UpstreamConnectionHandler) {
        guard let targetPool = exchange.attempt.pool else { return }
        exchange.attempt.upstream = connection
        connection.attach(self, readTimeout: exchange.policy.edits.tryTimeout ?? exchange.attempt.balancer?.upstream.tryTimeout ?? targetPool.settings.readTimeout, now: lastActivity)
        if !downstreamWritable { connection.setReadsPaused(true) }
        lifecycle.connected()
        connection.write(exchange.attempt.upstreamHead!)
        if !lifecycle.requestBodyDone { exchange.attempt.bodyStarted = true }
        if !lifecycle.requestBodyDone, var body = inbound {
            inbound = nil
            forwardRequestBody(&body)
            if body.readableBytes > 0 { inbound = body }
        }
        connection.flush()
        updateReads()
    }

    /// Sends request body bytes upstream, re-framing chunked bodies and enforcing the size limit.
    func forwardRequestBody(_ buffer: inout ByteBuffer) {
        guard let upstream = exchange.attempt.upstream else { return }
        upstreamUnflushed = true
        switch exchange.requestBody {
        case .none, .untilClose:
            lifecycle.requestBodyFinished()
        case .length(let remaining):
            let take = min(remaining, buffer.readableBytes)
            upstream.write(buffer.readSlice(length: take)!)
            exchange.requestBody = .length(remaining: remaining - take)
            if remaining == take { requestBodyFinished() }
        case .chunked(var decoder):
            let limit = exchange.route?.maxBodyBytes ?? 0
            do {
                while let event = try decoder.next(&buffer) {
                    switch event {
                    case .data(let slice):
                        exchange.requestBodyBytes += slice.readableBytes
                        if limit > 0, exchange.requestBodyBytes > limit {
                            respondError(.bodyTooLarge)
                            return
                        }
                        writeChunk(slice, to: upstream)
                    case .end:
                        upstream.write(lastChunk)
                        exchange.requestBody = .chunked(decoder)
                        requestBodyFinished()
                        return
                    }
                }
                exchange.requestBody = .chunked(decoder)
            } catch {
                respondError(.malformedChunkedBody)
            }
        }
    }

    private func requestBodyFinished() {
        lifecycle.requestBodyFinished()
        exchange.attempt.upstreamHead = nil
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
        if let id = exchange.request.headers.requestID, id.count > 0, id.count <= 128 {
            var ok = true
            for i in id.lower..<id.upper {
                let c = p[i]
                if c <= 0x20 || c >= 0x7F || c == UInt8(ascii: "\"") || c == UInt8(ascii: "\\") {
                    ok = false
                    break
                }
            }
            if ok {
                exchange.requestID.writeBytes(UnsafeRawBufferPointer(start: p.baseAddress! + id.lower, count: id.count))
                return
            }
        }
        worker.requestIDs.next(into: &exchange.requestID)
    }

    /// The request head as the upstream gets it: hop-by-hop fields removed, `X-Forwarded-*`
    /// and `X-Request-Id` set, `Host` as the route says, the body's framing re-stated.
    func makeUpstreamHead(_ head: ByteBuffer, route: CompiledRoute, pool: TargetPool) -> ByteBuffer {
        var out = ByteBuffer()
        swap(&out, &exchange.upstreamHeadOut)  // `out` is then the only reference, so clear() reuses storage
        if out.capacity == 0 { out = Exchange.newHeadBuffer() }
        // Field by field: `edits.changesHead` copied the whole struct (8 reference counts) per request.
        let scripted = !exchange.policy.edits.headers.isEmpty || exchange.policy.edits.path != nil || exchange.policy.edits.query != nil || exchange.policy.edits.body != nil
        var estimate = head.readableBytes + 256 + clientAddress.count + exchange.requestID.readableBytes + pool.hostHeader.count
        if scripted { estimate += exchange.policy.edits.headers.bytes + (exchange.policy.edits.path?.count ?? 0) + (exchange.policy.edits.query?.count ?? 0) }
        out.clear(minimumCapacity: estimate + (exchange.policy.edits.body?.readableBytes ?? 0))
        defer { exchange.upstreamHeadOut = out }
        head.withUnsafeReadableBytes { p in
            out.writeHead(estimate: estimate) { w in
                writeUpstreamHead(&w, p, route: route, pool: pool, scripted: scripted)
            }
        }
        // A body a script read or set travels with the head (it is whole, and bounded).
        if var body = exchange.policy.edits.body {
            out.writeBuffer(&body)
            return out
        }
        // A small body already here travels in the head's buffer: one write, and the kept
        // head is then the whole request, so a stale-connection retry can resend it.
        if case .length(let length) = exchange.requestBody, length <= Self.coalesceLimit, var rest = inbound, rest.readableBytes >= length {
            var body = rest.readSlice(length: length)!
            inbound = rest.readableBytes > 0 ? rest : nil
            out.writeBuffer(&body)
            exchange.requestBody = .length(remaining: 0)
            lifecycle.requestBodyFinished()
        }
        return out
    }
}

extension DownstreamConnectionHandler {
    @inline(__always)
    private func writeUpstreamHead(_ w: inout HeadWriter, _ p: UnsafeRawBufferPointer, route: CompiledRoute, pool: TargetPool, scripted: Bool) {
        let h = exchange.request.headers
        w.put(p, exchange.request.method)
        w.put(byte: HTTPBytes.sp)
        // Without a script's path or query, the target is copied whole (query included).
        let targetEnd = scripted ? exchange.request.path.upper : exchange.request.target.upper
        if let path = exchange.policy.edits.path {
            w.put(path)
        } else if route.stripPrefix, !route.exact {
            var rest = exchange.request.target.lower + route.path.count
            // A prefix that ends in "/" keeps it in the rewritten path.
            if route.path.last == UInt8(ascii: "/") { rest -= 1 }
            if rest >= targetEnd || p[rest] != UInt8(ascii: "/") { w.put(byte: UInt8(ascii: "/")) }
            if rest < targetEnd { w.put(p, rest, targetEnd - rest) }
        } else {
            w.put(p, exchange.request.target.lower, targetEnd - exchange.request.target.lower)
        }
        if scripted {
            if let query = exchange.policy.edits.query {
                if !query.isEmpty {
                    w.put(byte: UInt8(ascii: "?"))
                    w.put(query)
                }
            } else if exchange.request.path.upper < exchange.request.target.upper {
                w.put(p, exchange.request.path.upper, exchange.request.target.upper - exchange.request.path.upper)
            }
        }
        w.put(" HTTP/1.1\r\nHost: ")
        // A Host the script set wins over the route's choice.
        if !(scripted && exchange.policy.edits.headers.writeFirstValue(of: "host", into: &w)) {
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
                if scripted, exchange.policy.edits.headers.drops(p, field.name.lower, field.name.count) { continue }
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
        if tlsStream != nil { w.put("\r\nX-Forwarded-Proto: https\r\n") } else { w.put("\r\nX-Forwarded-Proto: http\r\n") }
        if let host = h.host {
            w.put("X-Forwarded-Host: ")
            w.put(p, host)
            w.put("\r\n")
        }
        w.put("X-Request-Id: ")
        w.put(exchange.requestID)
        w.put("\r\n")
        exchange.trace.write(into: &w)
        if scripted { exchange.policy.edits.headers.write(into: &w, skipping: "host") }
        // An upgrade the route passes: a bodiless HTTP/1.1 request that says `Connection: upgrade`.
        exchange.upgrading = false
        if !route.upgrades.isEmpty, h.connectionUpgrade, let upgrade = h.upgrade, exchange.request.minorVersion >= 1,
            case .none = exchange.request.framing, !(scripted && exchange.policy.edits.body != nil), route.allowsUpgrade(p, upgrade)
        {
            w.put("Connection: upgrade\r\nUpgrade: ")
            w.put(p, upgrade)
            w.put("\r\n")
            exchange.upgrading = true
        }
        if scripted, let body = exchange.policy.edits.body {
            w.put("Content-Length: ")
            w.decimal(body.readableBytes)
            w.put("\r\n")
        } else {
            switch exchange.request.framing {
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
