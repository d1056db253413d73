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
        guard shared.metricsEnabled || log.isOn else { return }
        let nanoseconds = (NIODeadline.now() - requestStart).nanoseconds
        if shared.metricsEnabled {
            worker.metrics.request(route: route?.metricID ?? -1, method: metricMethod, status: status, seconds: Double(nanoseconds) / 1e9)
        }
        if log.isOn { writeLogLine(log, status: status, nanoseconds: nanoseconds) }
    }

    /// Sends bytes to the client, counting them for the log line.
    @inline(__always)
    func sendToClient(_ buffer: ByteBuffer) {
        bytesSent &+= buffer.readableBytes
        context.write(wrapOutboundOut(buffer), promise: nil)
    }

    private func writeLogLine(_ log: AccessLog, status: Int, nanoseconds: Int64) {
        guard log.begin(epochNanoseconds: Self.wallClockNanoseconds()) else { return }
        log.string("request_id", buffer: requestID)
        log.traceID(trace)
        log.string("route", route?.name ?? "")
        logRequestLine.withUnsafeReadableBytes { p in
            let space = p.firstIndex(of: UInt8(ascii: " ")) ?? p.count
            log.string("method", UnsafeRawBufferPointer(rebasing: p[0..<space]))
            log.string("path", UnsafeRawBufferPointer(rebasing: p[min(p.count, space + 1)...]))
        }
        log.integer("status", status)
        log.integer("bytes_sent", bytesSent)
        // A small body travels in the head's buffer without being counted as body bytes.
        if case .contentLength(let length) = request.framing, requestBodyDone {
            log.integer("bytes_received", length)
        } else {
            log.integer("bytes_received", requestBodyBytes)
        }
        log.seconds("duration", nanoseconds: nanoseconds)
        log.seconds("upstream_duration", nanoseconds: upstreamNanoseconds)
        log.seconds("lua_duration", nanoseconds: Int64(luaNanoseconds))
        if let pool = targetPool {
            pool.logName.withUnsafeBytes { log.string("upstream", $0) }
        }
        clientAddress.withUnsafeBytes { log.string("client", $0) }
        if !logFields.isEmpty {
            log.raw(",\"fields\":{")
            for (i, (name, value)) in logFields.enumerated() {
                if i > 0 { log.raw(",") }
                var n = name
                n.withUTF8 { log.key(UnsafeRawBufferPointer($0)) }
                var v = value
                v.withUTF8 { log.value(UnsafeRawBufferPointer($0)) }
            }
            log.raw("}")
        }
        log.end()
    }

    static func wallClockNanoseconds() -> Int64 {
        var ts = timespec()
        clock_gettime(CLOCK_REALTIME, &ts)
        return Int64(ts.tv_sec) * 1_000_000_000 + Int64(ts.tv_nsec)
    }
}
