#if canImport(Glibc)
import Glibc
#endif
import NIOCore
import Telemetry

extension DownstreamConnectionHandler {
    /// Counts the request that just ended, once, with the status the client got (499: the
    /// client left before any response, as nginx logs it), and writes its access-log line.
    @inline(__always)
    func recordRequest(status: Int) {
        guard exchange.open else { return }
        exchange.open = false
        let shared = worker.generation.shared
        let log = worker.accessLog
        guard shared.metricsEnabled || log.isOn || exchange.traced else { return }
        let nanoseconds = (worker.clock.now() - (lifecycle.requestStarted ?? lastActivity)).nanoseconds
        if shared.metricsEnabled {
            worker.metrics.request(route: exchange.route?.metricID ?? -1, method: exchange.metricMethod, status: status, seconds: Double(nanoseconds) / 1e9)
        }
        guard log.isOn || exchange.traced else { return }
        let now = Self.wallClockNanoseconds()
        if log.isOn { writeLogLine(log, status: status, nanoseconds: nanoseconds, now: now) }
        if exchange.traced { recordServerSpan(status: status, nanoseconds: nanoseconds, end: now) }
    }

    /// The request's own span, ended now.
    private func recordServerSpan(status: Int, nanoseconds: Int64, end: Int64) {
        var path: [UInt8] = []
        exchange.record.logRequestLine.withUnsafeReadableBytes { p in
            let space = p.firstIndex(of: UInt8(ascii: " ")) ?? p.count
            var rest = UnsafeRawBufferPointer(rebasing: p[min(p.count, space + 1)...])
            if let q = rest.firstIndex(of: UInt8(ascii: "?")) { rest = UnsafeRawBufferPointer(rebasing: rest[..<q]) }
            path = Array(rest)
        }
        worker.spans.record(
            RecordedSpan(
                traceHigh: exchange.trace.traceHigh, traceLow: exchange.trace.traceLow, spanID: exchange.trace.spanID,
                parentID: exchange.trace.continued ? exchange.trace.parentID : 0, server: true,
                startNanoseconds: end - nanoseconds, endNanoseconds: end, status: status, method: exchange.metricMethod,
                route: exchange.route?.nameBytes ?? [], path: path, upstream: exchange.attempt.balancer.map { $0.upstream.nameBytes } ?? [],
                target: exchange.attempt.pool?.logName ?? [], tryNumber: exchange.attempt.count, error: nil, requestID: exchange.requestID))
        if worker.spans.wantsExport { worker.exportSpans() }
    }

    /// The current try's span, ended now: its status, or why it failed.
    func recordTrySpan(_ pool: TargetPool, status: Int, error: String?) {
        let end = Self.wallClockNanoseconds()
        let nanoseconds = (worker.clock.now() - exchange.attempt.start).nanoseconds
        worker.spans.record(
            RecordedSpan(
                traceHigh: exchange.trace.traceHigh, traceLow: exchange.trace.traceLow, spanID: exchange.trace.trySpanID, parentID: exchange.trace.spanID,
                server: false, startNanoseconds: end - nanoseconds, endNanoseconds: end, status: status, method: exchange.metricMethod,
                route: [], path: [], upstream: exchange.attempt.balancer.map { $0.upstream.nameBytes } ?? [], target: pool.logName,
                tryNumber: exchange.attempt.count, error: error, requestID: nil))
    }

    /// Sends bytes to the client, counting them for the log line.
    @inline(__always)
    func sendToClient(_ buffer: ByteBuffer) {
        exchange.record.bytesSent &+= buffer.readableBytes
        io.write(buffer)
    }

    private func writeLogLine(_ log: AccessLog, status: Int, nanoseconds: Int64, now: Int64) {
        var estimate = 400 + exchange.record.logRequestLine.readableBytes * 6
        for (name, value) in exchange.record.logFields { estimate += (name.utf8.count + value.utf8.count) * 6 + 8 }
        _ = log.line(epochNanoseconds: now, estimate: estimate) { w in
            // The id and the client's address need no escaping: ids are kept only without quotes,
            // backslashes or control bytes (setRequestID), and addresses are IP literals.
            w.put(",\"request_id\":\"")
            w.put(exchange.requestID)
            w.put(byte: UInt8(ascii: "\""))
            w.jsonName("trace_id")
            w.put(byte: UInt8(ascii: "\""))
            w.hex(exchange.trace.traceHigh, digits: 16)
            w.hex(exchange.trace.traceLow, digits: 16)
            w.put(byte: UInt8(ascii: "\""))
            if let route = exchange.route { w.jsonString("route", route.nameBytes) } else { w.put(",\"route\":\"\"") }
            exchange.record.logRequestLine.withUnsafeReadableBytes { p in
                let space = p.firstIndex(of: UInt8(ascii: " ")) ?? p.count
                w.jsonString("method", UnsafeRawBufferPointer(rebasing: p[0..<space]))
                w.jsonString("path", UnsafeRawBufferPointer(rebasing: p[min(p.count, space + 1)...]))
            }
            w.jsonInteger("status", status)
            w.jsonInteger("bytes_sent", exchange.record.bytesSent)
            // A small body travels in the head's buffer without being counted as body bytes.
            if case .contentLength(let length) = exchange.request.framing, lifecycle.requestBodyDone {
                w.jsonInteger("bytes_received", length)
            } else {
                w.jsonInteger("bytes_received", exchange.requestBodyBytes)
            }
            w.jsonSeconds("duration", nanoseconds: nanoseconds)
            w.jsonSeconds("upstream_duration", nanoseconds: exchange.record.upstreamNanoseconds)
            w.jsonSeconds("lua_duration", nanoseconds: Int64(exchange.record.luaNanoseconds))
            if let pool = exchange.attempt.pool { w.jsonString("upstream", pool.logName) }
            w.put(",\"client\":\"")
            w.put(clientAddress)
            w.put(byte: UInt8(ascii: "\""))
            if !exchange.record.logFields.isEmpty {
                w.put(",\"fields\":{")
                for (i, (name, value)) in exchange.record.logFields.enumerated() {
                    if i > 0 { w.put(byte: UInt8(ascii: ",")) }
                    var n = name
                    n.withUTF8 { w.jsonQuoted(UnsafeRawBufferPointer($0)) }
                    w.put(byte: UInt8(ascii: ":"))
                    var v = value
                    v.withUTF8 { w.jsonQuoted(UnsafeRawBufferPointer($0)) }
                }
                w.put(byte: UInt8(ascii: "}"))
            }
        }
    }

    static func wallClockNanoseconds() -> Int64 {
        var ts = timespec()
        clock_gettime(CLOCK_REALTIME, &ts)
        return Int64(ts.tv_sec) * 1_000_000_000 + Int64(ts.tv_nsec)
    }
}
