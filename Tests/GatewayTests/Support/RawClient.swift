import Foundation

#if canImport(Glibc)
import Glibc
#endif

/// A blocking TCP client for tests: sends exact bytes (smuggling cases need that) and reads
/// HTTP/1.1 responses, with a timeout on every read so a hang fails the test instead of stalling it.
final class RawClient {
    struct Response {
        var status: Int
        var headers: [(String, String)]
        var body: [UInt8]
        /// Body bytes counted but not kept (`keepBody: false`).
        var bodyCount = 0

        func header(_ name: String) -> String? {
            headers.first { $0.0.lowercased() == name.lowercased() }?.1
        }

        func headers(_ name: String) -> [String] {
            headers.filter { $0.0.lowercased() == name.lowercased() }.map(\.1)
        }

        var text: String { String(decoding: body, as: UTF8.self) }

        /// The echo upstream's JSON, decoded.
        var json: [String: Any] { (try? JSONSerialization.jsonObject(with: Data(body))) as? [String: Any] ?? [:] }

        /// Headers the echo upstream received, as (name, value) pairs.
        var echoedHeaders: [(String, String)] {
            (json["headers"] as? [[String]] ?? []).map { ($0[0], $0[1]) }
        }

        func echoed(_ name: String) -> [String] {
            echoedHeaders.filter { $0.0.lowercased() == name.lowercased() }.map(\.1)
        }
    }

    struct Failure: Error, CustomStringConvertible {
        var description: String
    }

    private let fd: Int32
    private var buffer: [UInt8] = []

    init(port: Int, timeout: Double = 10) throws {
        fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
        guard fd >= 0 else { throw Failure(description: "socket() failed") }
        var tv = timeval(tv_sec: Int(timeout), tv_usec: Int((timeout - Double(Int(timeout))) * 1e6))
        setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, socklen_t(MemoryLayout<timeval>.size))
        setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, socklen_t(MemoryLayout<timeval>.size))
        var addr = sockaddr_in()
        addr.sin_family = sa_family_t(AF_INET)
        addr.sin_port = in_port_t(UInt16(port).bigEndian)
        addr.sin_addr.s_addr = inet_addr("127.0.0.1")
        let rc = withUnsafePointer(to: &addr) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { connect(fd, $0, socklen_t(MemoryLayout<sockaddr_in>.size)) }
        }
        // No close here: a class whose init throws once every property is set still runs its
        // deinit, and a second close could shut a descriptor another thread has just opened.
        guard rc == 0 else { throw Failure(description: "connect to \(port) failed: errno \(errno)") }
    }

    deinit { if fd >= 0 { close(fd) } }

    /// Makes the close a reset (RST): the peer's next write fails with EPIPE/ECONNRESET.
    func resetOnClose() {
        var linger = Glibc.linger(l_onoff: 1, l_linger: 0)
        setsockopt(fd, SOL_SOCKET, SO_LINGER, &linger, socklen_t(MemoryLayout<Glibc.linger>.size))
    }

    func send(_ text: String) throws { try send(Array(text.utf8)) }

    func send(_ bytes: [UInt8]) throws {
        var offset = 0
        while offset < bytes.count {
            let n = bytes[offset...].withUnsafeBytes { Glibc.send(fd, $0.baseAddress, $0.count, Int32(MSG_NOSIGNAL)) }
            guard n > 0 else { throw Failure(description: "send failed: errno \(errno)") }
            offset += n
        }
    }

    /// Reads more bytes into the buffer; false on orderly close.
    private func fill() throws -> Bool {
        var chunk = [UInt8](repeating: 0, count: 65536)
        let n = chunk.withUnsafeMutableBytes { recv(fd, $0.baseAddress, $0.count, 0) }
        if n == 0 { return false }
        if n < 0 {
            if errno == ECONNRESET { return false }
            throw Failure(description: "recv failed or timed out: errno \(errno)")
        }
        buffer.append(contentsOf: chunk[0..<n])
        return true
    }

    func readLine() throws -> String {
        while true {
            if let i = buffer.firstIndex(of: 10) {
                var line = Array(buffer[..<i])
                buffer.removeFirst(i + 1)
                if line.last == 13 { line.removeLast() }
                return String(decoding: line, as: UTF8.self)
            }
            guard try fill() else { throw Failure(description: "connection closed mid-head") }
        }
    }

    private func readExactly(_ count: Int) throws -> [UInt8] {
        while buffer.count < count {
            guard try fill() else { throw Failure(description: "connection closed mid-body") }
        }
        let out = Array(buffer[..<count])
        buffer.removeFirst(count)
        return out
    }

    /// Reads one response; `keepBody: false` counts the body instead of keeping it (large downloads).
    func readResponse(head isHEAD: Bool = false, keepBody: Bool = true) throws -> Response {
        var status = 0
        var headers: [(String, String)] = []
        repeat {
            let statusLine = try readLine()
            let parts = statusLine.split(separator: " ", maxSplits: 2)
            guard parts.count >= 2, let s = Int(parts[1]) else { throw Failure(description: "bad status line \(statusLine)") }
            status = s
            headers = []
            while true {
                let line = try readLine()
                if line.isEmpty { break }
                guard let colon = line.firstIndex(of: ":") else { throw Failure(description: "bad header \(line)") }
                headers.append((String(line[..<colon]), line[line.index(after: colon)...].trimmingCharacters(in: .whitespaces)))
            }
        } while status >= 100 && status < 200
        var response = Response(status: status, headers: headers, body: [])
        if isHEAD || status == 204 || status == 304 { return response }
        if response.header("Transfer-Encoding")?.lowercased() == "chunked" {
            while true {
                let sizeLine = try readLine()
                guard let size = Int(sizeLine.split(separator: ";")[0], radix: 16) else { throw Failure(description: "bad chunk size \(sizeLine)") }
                if size == 0 {
                    while try readLine() != "" {}
                    break
                }
                let data = try readExactly(size)
                if keepBody { response.body += data } else { response.bodyCount += size }
                _ = try readExactly(2)
            }
        } else if let length = response.header("Content-Length").flatMap({ Int($0) }) {
            var remaining = length
            while remaining > 0 {
                let take = min(remaining, 1 << 20)
                let data = try readExactly(take)
                if keepBody { response.body += data } else { response.bodyCount += take }
                remaining -= take
            }
        } else {
            while try fill() {
                if !keepBody {
                    response.bodyCount += buffer.count
                    buffer.removeAll(keepingCapacity: true)
                }
            }
            if keepBody { response.body = buffer }
            buffer = []
        }
        return response
    }

    /// True if the server closed the connection (reads EOF within the timeout).
    func isClosedByPeer() -> Bool {
        buffer.removeAll()
        return (try? fill()) == false
    }

    /// A whole request/response on this connection.
    func request(_ method: String = "GET", _ target: String, headers: [(String, String)] = [], body: [UInt8]? = nil) throws -> Response {
        var text = "\(method) \(target) HTTP/1.1\r\nHost: localhost\r\n"
        for (name, value) in headers { text += "\(name): \(value)\r\n" }
        if let body { text += "Content-Length: \(body.count)\r\n" }
        text += "\r\n"
        try send(Array(text.utf8) + (body ?? []))
        return try readResponse(head: method == "HEAD")
    }
}

