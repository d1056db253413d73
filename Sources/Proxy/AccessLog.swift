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
    /// Under `moongate test`: lines are kept for the test to read (`takeCaptured`) instead of
    /// written, when the config turns the log on at all.
    private var capturing = false
    private var captureOn = false

    static let flushBytes = 64 * 1024
    static let maxBytes = 1024 * 1024

    init() {
        buffer = ByteBufferAllocator().buffer(capacity: Self.flushBytes + 4096)
    }

    /// Switches to the generation's destination (lines of the last one go out first).
    func use(_ destination: AccessLogConfig.Destination) {
        if capturing {
            if case .off = destination { captureOn = false } else { captureOn = true }
            return
        }
        let next = AccessLogFiles.fd(destination)
        if next != fd { flush() }
        fd = next
        var info = stat()
        regularFile = fd >= 0 && fstat(fd, &info) == 0 && (info.st_mode & S_IFMT) == S_IFREG
    }

    var isOn: Bool { fd >= 0 || captureOn }

    /// Keeps lines in memory from now on (see `capturing`); `destination` as in `use`.
    func capture(_ destination: AccessLogConfig.Destination) {
        flush()
        fd = -1
        capturing = true
        use(destination)
    }

    /// The lines kept since the last call, each without its newline.
    func takeCaptured() -> [String] {
        guard capturing else { return [] }
        let text = buffer.readString(length: buffer.readableBytes) ?? ""
        buffer.clear()
        return text.split(separator: "\n").map(String.init)
    }

    /// Appends one line: `{"time":"...Z"`, what `fields` writes (`,"name":value` pieces),
    /// then `}` and a newline. False when the log is off or full (the line is counted as dropped).
    @inline(__always)
    func line(epochNanoseconds ns: Int64, estimate: Int, _ fields: (inout HeadWriter) -> Void) -> Bool {
        guard fd >= 0 || captureOn else { return false }
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
        let ms = Int(ns / 1_000_000 % 1000)
        let prefix = cachedPrefix
        // One pointer for the whole line: a `ByteBuffer.write*` call per piece made the log
        // cost 24K instructions a request (callgrind), most of it uniqueness and exclusivity checks.
        buffer.writeHead(estimate: estimate + prefix.count + 16) { w in
            w.put(prefix)
            w.put(byte: UInt8(48 + ms / 100))
            w.put(byte: UInt8(48 + ms / 10 % 10))
            w.put(byte: UInt8(48 + ms % 10))
            w.put("Z\"")
            fields(&w)
            w.put("}\n")
        }
        if buffer.readableBytes >= Self.flushBytes, !capturing { flush() }
        return true
    }

    private func two(_ v: Int32) -> String { v < 10 ? "0\(v)" : "\(v)" }

    /// Writes out the buffered lines, in pieces of whole lines no longer than `PIPE_BUF`, so
    /// that two workers' lines never interleave on a pipe.
    func flush() {
        guard buffer.readableBytes > 0, !capturing else { return }
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
