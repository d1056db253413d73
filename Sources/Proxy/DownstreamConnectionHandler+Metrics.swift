#if canImport(Glibc)
import Glibc
#endif
import NIOCore

extension DownstreamConnectionHandler {
    /// Counts the request that just ended, once, with the status the client got (499: the
    /// client left before any response, as nginx logs it), and writes its access-log line.
    @inline(__always)
    func recordRequest(status: Int) {
        guard requestOpen else { return }
        requestOpen = false
        let shared = worker.generation.shared
        let log = worker.accessLog
        guard shared.metricsEnabled || log.isOn || traced else { return }
        let nanoseconds = (NIODeadline.now() - requestStart).nanoseconds
        if shared.metricsEnabled {
            worker.metrics.request(route: route?.metricID ?? -1, method: metricMethod, status: status, seconds: Double(nanoseconds) / 1e9)
        }
        guard log.isOn || traced else { return }
        let now = Self.wallClockNanoseconds()
        if log.isOn { writeLogLine(log, status: status, nanoseconds: nanoseconds, now: now) }
        if traced { recordServerSpan(status: status, nanoseconds: nanoseconds, end: now) }
    }

    /// The request's own span, ended now.
    private func recordServerSpan(status: Int, nanoseconds: Int64, end: Int64) {
        var path: [UInt8] = []
        logRequestLine.withUnsafeReadableBytes { p in
            let space = p.firstIndex(of: UInt8(ascii: " ")) ?? p.count
            var rest = UnsafeRawBufferPointer(rebasing: p[min(p.count, space + 1)...])
            if let q = rest.firstIndex(of: UInt8(ascii: "?")) { rest = UnsafeRawBufferPointer(rebasing: rest[..<q]) }
            path = Array(rest)
        }
        worker.spans.record(
            RecordedSpan(
                traceHigh: trace.traceHigh, traceLow: trace.traceLow, spanID: trace.spanID,
                parentID: trace.continued ? trace.parentID : 0, server: true,
                startNanoseconds: end - nanoseconds, endNanoseconds: end, status: status, method: metricMethod,
                route: route?.nameBytes ?? [], path: path, upstream: balancer.map { $0.upstream.nameBytes } ?? [],
                target: targetPool?.logName ?? [], tryNumber: tries, error: nil, requestID: requestID))
        if worker.spans.wantsExport { worker.exportSpans() }
    }

    /// The current try's span, ended now: its status, or why it failed.
    func recordTrySpan(_ pool: TargetPool, status: Int, error: String?) {
        let end = Self.wallClockNanoseconds()
        let nanoseconds = (NIODeadline.now() - tryStart).nanoseconds
        worker.spans.record(
            RecordedSpan(
                traceHigh: trace.traceHigh, traceLow: trace.traceLow, spanID: trace.trySpanID, parentID: trace.spanID,
                server: false, startNanoseconds: end - nanoseconds, endNanoseconds: end, status: status, method: metricMethod,
                route: [], path: [], upstream: balancer.map { $0.upstream.nameBytes } ?? [], target: pool.logName,
                tryNumber: tries, error: error, requestID: nil))
    }

    /// Sends bytes to the client, counting them for the log line.
    @inline(__always)
    func sendToClient(_ buffer: ByteBuffer) {
        bytesSent &+= buffer.readableBytes
        io.write(buffer)
    }

    private func writeLogLine(_ log: AccessLog, status: Int, nanoseconds: Int64, now: Int64) {
        var estimate = 400 + logRequestLine.readableBytes * 6
        for (name, value) in logFields { estimate += (name.utf8.count + value.utf8.count) * 6 + 8 }
        _ = log.line(epochNanoseconds: now, estimate: estimate) { w in
            // The id and the client's address need no escaping: ids are kept only without quotes,
            // backslashes or control bytes (setRequestID), and addresses are IP literals.
            w.put(",\"request_id\":\"")
            w.put(requestID)
            w.put(byte: UInt8(ascii: "\""))
            w.jsonName("trace_id")
            w.put(byte: UInt8(ascii: "\""))
            w.hex(trace.traceHigh, digits: 16)
            w.hex(trace.traceLow, digits: 16)
            w.put(byte: UInt8(ascii: "\""))
            if let route { w.jsonString("route", route.nameBytes) } else { w.put(",\"route\":\"\"") }
            logRequestLine.withUnsafeReadableBytes { p in
                let space = p.firstIndex(of: UInt8(ascii: " ")) ?? p.count
                w.jsonString("method", UnsafeRawBufferPointer(rebasing: p[0..<space]))
                w.jsonString("path", UnsafeRawBufferPointer(rebasing: p[min(p.count, space + 1)...]))
            }
            w.jsonInteger("status", status)
            w.jsonInteger("bytes_sent", bytesSent)
            // A small body travels in the head's buffer without being counted as body bytes.
            if case .contentLength(let length) = request.framing, requestBodyDone {
                w.jsonInteger("bytes_received", length)
            } else {
                w.jsonInteger("bytes_received", requestBodyBytes)
            }
            w.jsonSeconds("duration", nanoseconds: nanoseconds)
            w.jsonSeconds("upstream_duration", nanoseconds: upstreamNanoseconds)
            w.jsonSeconds("lua_duration", nanoseconds: Int64(luaNanoseconds))
            if let pool = targetPool { w.jsonString("upstream", pool.logName) }
            w.put(",\"client\":\"")
            w.put(clientAddress)
            w.put(byte: UInt8(ascii: "\""))
            if !logFields.isEmpty {
                w.put(",\"fields\":{")
                for (i, (name, value)) in logFields.enumerated() {
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
