#if canImport(Glibc)
import Glibc
#endif
import Config
import NIOCore
import NIOConcurrencyHelpers

/// One worker's access log: a JSON line per request, appended to a buffer that goes out in
/// whole lines when it passes 16 KB or every 100 ms. Hand-written rather than a swift-log
/// call per request: a `Logger.Metadata` dictionary of a dozen boxed values per request costs
/// more than the line itself; swift-log carries the gateway's other logs.
final class AccessLog {
    private var buffer: ByteBuffer
    private var fd: Int32 = -1
    /// Lines dropped because the destination could not keep up (the buffer is bounded).
    private(set) var dropped = 0
    private var cachedSecond = -1
    private var cachedPrefix: [UInt8] = []
    /// A regular file takes the whole buffer in one `write` (appends to a file are not torn
    /// between workers); pipes and terminals get whole lines of at most `PIPE_BUF`.
    private var regularFile = false

    static let flushBytes = 64 * 1024
    static let maxBytes = 1024 * 1024

    init() {
        buffer = ByteBufferAllocator().buffer(capacity: Self.flushBytes + 4096)
    }

    /// Switches to the generation's destination (lines of the last one go out first).
    func use(_ destination: AccessLogConfig.Destination) {
        let next = AccessLogFiles.fd(destination)
        if next != fd { flush() }
        fd = next
        var info = stat()
        regularFile = fd >= 0 && fstat(fd, &info) == 0 && (info.st_mode & S_IFMT) == S_IFREG
    }

    var isOn: Bool { fd >= 0 }

    /// Starts a line: `{"time":"...",`; the caller writes its fields, then calls `end()`.
    func begin(epochNanoseconds ns: Int64) -> Bool {
        guard fd >= 0 else { return false }
        if buffer.readableBytes > Self.maxBytes {
            dropped += 1
            return false
        }
        let second = Int(ns / 1_000_000_000)
        if second != cachedSecond {
            cachedSecond = second
            var t = time_t(second)
            var parts = tm()
            gmtime_r(&t, &parts)
            cachedPrefix = Array(
                "{\"time\":\"\(parts.tm_year + 1900)-\(two(parts.tm_mon + 1))-\(two(parts.tm_mday))T\(two(parts.tm_hour)):\(two(parts.tm_min)):\(two(parts.tm_sec))."
                    .utf8)
        }
        buffer.writeBytes(cachedPrefix)
        let ms = Int(ns / 1_000_000 % 1000)
        buffer.writeInteger(UInt8(48 + ms / 100))
        buffer.writeInteger(UInt8(48 + ms / 10 % 10))
        buffer.writeInteger(UInt8(48 + ms % 10))
        buffer.writeStaticString("Z\"")
        return true
    }

    private func two(_ v: Int32) -> String { v < 10 ? "0\(v)" : "\(v)" }

    /// `,"name":"value"` with `value`'s bytes escaped for JSON.
    func string(_ name: StaticString, _ value: UnsafeRawBufferPointer) {
        buffer.writeStaticString(",\"")
        buffer.writeStaticString(name)
        buffer.writeStaticString("\":\"")
        escape(value)
        buffer.writeInteger(UInt8(ascii: "\""))
    }

    func string(_ name: StaticString, _ value: String) {
        var v = value
        v.withUTF8 { string(name, UnsafeRawBufferPointer($0)) }
    }

    func string(_ name: StaticString, buffer value: ByteBuffer) {
        value.withUnsafeReadableBytes { string(name, $0) }
    }

    func integer(_ name: StaticString, _ value: Int) {
        buffer.writeStaticString(",\"")
        buffer.writeStaticString(name)
        buffer.writeStaticString("\":")
        digits(value)
    }

    /// Decimal digits without a `String` in between.
    private func digits(_ value: Int) {
        var v = value
        if v < 0 {
            buffer.writeInteger(UInt8(ascii: "-"))
            v = -v
        }
        buffer.writeWithUnsafeMutableBytes(minimumWritableBytes: 20) { out in
            var tmp: (UInt64, UInt64, UInt64) = (0, 0, 0)
            return withUnsafeMutableBytes(of: &tmp) { t in
                var n = 0
                repeat {
                    t[n] = UInt8(48 + v % 10)
                    v /= 10
                    n += 1
                } while v > 0
                for i in 0..<n { out[i] = t[n - 1 - i] }
                return n
            }
        }
    }

    /// Seconds with microseconds.
    func seconds(_ name: StaticString, nanoseconds: Int64) {
        buffer.writeStaticString(",\"")
        buffer.writeStaticString(name)
        buffer.writeStaticString("\":")
        let us = max(0, Int(nanoseconds / 1000))
        digits(us / 1_000_000)
        buffer.writeInteger(UInt8(ascii: "."))
        let frac = us % 1_000_000
        var scale = 100_000
        while scale > 1, frac < scale {
            buffer.writeInteger(UInt8(ascii: "0"))
            scale /= 10
        }
        digits(frac)
    }

    /// `"name":` (escaped), inside an object the caller opened.
    func key(_ name: UnsafeRawBufferPointer) {
        buffer.writeInteger(UInt8(ascii: "\""))
        escape(name)
        buffer.writeStaticString("\":")
    }

    /// `"value"` (escaped).
    func value(_ value: UnsafeRawBufferPointer) {
        buffer.writeInteger(UInt8(ascii: "\""))
        escape(value)
        buffer.writeInteger(UInt8(ascii: "\""))
    }

    /// A raw fragment the caller built (already valid JSON in context).
    func raw(_ bytes: StaticString) { buffer.writeStaticString(bytes) }

    func traceID(_ trace: TraceContext) {
        buffer.writeStaticString(",\"trace_id\":\"")
        trace.writeTraceID(into: &buffer)
        buffer.writeInteger(UInt8(ascii: "\""))
    }

    func end() {
        buffer.writeStaticString("}\n")
        if buffer.readableBytes >= Self.flushBytes { flush() }
    }

    private func escape(_ p: UnsafeRawBufferPointer) {
        // Runs of plain bytes go in one copy; only the few bytes JSON escapes go one by one.
        var start = 0
        for (i, c) in p.enumerated() where c == 34 || c == 92 || c < 0x20 || c == 0x7F {
            if i > start { buffer.writeBytes(UnsafeRawBufferPointer(rebasing: p[start..<i])) }
            start = i + 1
            escapeByte(c)
        }
        if start < p.count { buffer.writeBytes(UnsafeRawBufferPointer(rebasing: p[start...])) }
    }

    private func escapeByte(_ c: UInt8) {
        do {
            switch c {
            case UInt8(ascii: "\""): buffer.writeStaticString("\\\"")
            case UInt8(ascii: "\\"): buffer.writeStaticString("\\\\")
            case 0..<0x20, 0x7F:
                buffer.writeStaticString("\\u00")
                TraceContext.writeHex(UInt64(c), 2, into: &buffer)
            default: buffer.writeInteger(c)
            }
        }
    }

    /// Writes out the buffered lines, in pieces of whole lines no longer than `PIPE_BUF`, so
    /// that two workers' lines never interleave on a pipe.
    func flush() {
        guard buffer.readableBytes > 0 else { return }
        guard fd >= 0 else {
            buffer.clear()
            return
        }
        buffer.withUnsafeReadableBytes { p in
            var start = 0
            while start < p.count {
                var end = regularFile ? p.count : min(p.count, start + Int(PIPE_BUF))
                if end < p.count {
                    // Back to the last newline in the piece (a line longer than the piece goes whole).
                    var cut = end
                    while cut > start, p[cut - 1] != 10 { cut -= 1 }
                    if cut > start { end = cut } else { while end < p.count, p[end - 1] != 10 { end += 1 } }
                }
                var offset = start
                while offset < end {
                    let n = write(fd, p.baseAddress! + offset, end - offset)
                    if n < 0, errno == EINTR { continue }
                    if n <= 0 { return }  // the destination is gone: drop what is left
                    offset += n
                }
                start = end
            }
        }
        buffer.clear()
    }
}

/// Access-log files, opened once per path and kept for the life of the process (reloads
/// keep writing where they wrote; rotate with copytruncate).
enum AccessLogFiles {
    private static let files = NIOLockedValueBox<[String: Int32]>([:])

    static func fd(_ destination: AccessLogConfig.Destination) -> Int32 {
        switch destination {
        case .off: return -1
        case .stdout: return 1
        case .stderr: return 2
        case .file(let path):
            return files.withLockedValue { files in
                if let fd = files[path] { return fd }
                let fd = open(path, O_WRONLY | O_APPEND | O_CREAT | O_CLOEXEC, 0o644)
                if fd >= 0 { files[path] = fd }
                return fd
            }
        }
    }
}
