// Hot path: one request head and one response head per HTTP/2 stream.
import NIOCore
import NIOHPACK

/// An HTTP/2 request's header block written as an HTTP/1.1 request head (RFC 9113 8.3.1,
/// RFC 9112 3), for the handler's own parser to read, checked on the way (RFC 9113 8.2, 8.3).
///
/// The checks are ours, not swift-nio-http2's (its header validation is off): NIO's builds a
/// Swift string per name and ran to 17% of a request's instructions; this pass already reads
/// every byte. What a block must not have (each a malformed request, refused as a stream
/// error): a pseudo-field other than `:method`, `:scheme`, `:authority` and `:path`, one
/// repeated or after a regular field, `:method` or `:path` missing; a name that is not a
/// lower-case token; a connection-specific field (`connection`, `keep-alive`,
/// `proxy-connection`, `transfer-encoding`, `upgrade`, `te` other than `trailers`); a value
/// with NUL, CR or LF or with white space at either end. CONNECT and extended CONNECT
/// (`:protocol`) are refused too: nothing here tunnels over a stream. The HTTP/1.1 parser
/// then checks the head again as it checks any client's.
enum H2RequestHead {
    /// Writes the head into `out`; returns whether the method is HEAD and whether the block
    /// gave the body's length, or nil when the stream must be refused.
    static func write(_ headers: HPACKHeaders, endStream: Bool, into out: inout ByteBuffer) -> (isHEAD: Bool, length: Int?)? {
        // One pass, on the strings' bytes (String operations per field measured at a twentieth
        // of a request): the pseudo-fields come first, so the request line is written when
        // the first regular field shows up.
        var method: String?
        var path: String?
        var authority: String?
        var scheme = false
        var lineWritten = false
        var length: Int?
        var cookies: [String] = []
        for header in headers {
            let ok: Bool = bytes(header.name) { name in
                bytes(header.value) { value in
                    guard isFieldValue(value), let first = name.first else { return false }
                    if first == UInt8(ascii: ":") {
                        guard !lineWritten else { return false }
                        if equals(name, ":method") {
                            guard method == nil else { return false }
                            method = header.value
                        } else if equals(name, ":path") {
                            guard path == nil else { return false }
                            path = header.value
                        } else if equals(name, ":authority") {
                            guard authority == nil else { return false }
                            authority = header.value
                        } else if equals(name, ":scheme") {
                            guard !scheme else { return false }
                            scheme = true
                        } else {
                            return false  // `:status`, `:protocol` (RFC 8441), unknown ones
                        }
                        return true
                    }
                    if !lineWritten {
                        guard writeLine(method, path, authority, scheme, into: &out) else { return false }
                        lineWritten = true
                    }
                    guard isLowerToken(name) else { return false }
                    switch name.count {
                    case 2 where equals(name, "te"):
                        // `te: trailers` is hop-by-hop: not passed on.
                        return equals(value, "trailers")
                    case 4 where equals(name, "host"):
                        // `:authority` wins over a `host` field (RFC 9113 8.3.1).
                        if authority != nil { return true }
                    case 6 where equals(name, "cookie"):
                        // HTTP/2 may split cookies into fields; HTTP/1.1 wants one (RFC 9113 8.2.3).
                        cookies.append(header.value)
                        return true
                    case 7 where equals(name, "upgrade"), 10 where equals(name, "connection"), 10 where equals(name, "keep-alive"),
                        16 where equals(name, "proxy-connection"), 17 where equals(name, "transfer-encoding"):
                        return false
                    case 14 where equals(name, "content-length"):
                        // One, and digits only: the lane frames the body by it (RFC 9113 8.1.1).
                        guard length == nil, value.count > 0, value.count <= 18, value.allSatisfy({ $0 >= 48 && $0 <= 57 }) else { return false }
                        length = value.reduce(0) { $0 * 10 + Int($1 - 48) }
                    default:
                        break
                    }
                    out.writeWithUnsafeMutableBytes(minimumWritableBytes: name.count + value.count + 4) { p in
                        UnsafeMutableRawBufferPointer(rebasing: p[0..<name.count]).copyMemory(from: name)
                        p[name.count] = UInt8(ascii: ":")
                        p[name.count + 1] = UInt8(ascii: " ")
                        let at = name.count + 2
                        if value.count > 0 { UnsafeMutableRawBufferPointer(rebasing: p[at..<(at + value.count)]).copyMemory(from: value) }
                        p[at + value.count] = HTTPBytes.cr
                        p[at + value.count + 1] = HTTPBytes.lf
                        return at + value.count + 2
                    }
                    return true
                }
            }
            guard ok else { return nil }
        }
        if !lineWritten {
            guard writeLine(method, path, authority, scheme, into: &out) else { return nil }
        }
        if !cookies.isEmpty {
            out.writeStaticString("cookie: ")
            out.writeString(cookies.joined(separator: "; "))
            out.writeStaticString("\r\n")
        }
        if !endStream, length == nil { out.writeStaticString("transfer-encoding: chunked\r\n") }
        out.writeStaticString("\r\n")
        return (method == "HEAD", length)
    }

    /// A string's UTF-8 bytes, without copying a native one.
    @inline(__always)
    private static func bytes<T>(_ s: String, _ body: (UnsafeRawBufferPointer) -> T) -> T {
        if let result = s.utf8.withContiguousStorageIfAvailable({ body(UnsafeRawBufferPointer($0)) }) { return result }
        var copy = s
        return copy.withUTF8 { body(UnsafeRawBufferPointer($0)) }
    }

    @inline(__always)
    private static func equals(_ p: UnsafeRawBufferPointer, _ text: StaticString) -> Bool {
        HTTPBytes.equals(p, 0, p.count, text)
    }

    /// The request line and Host, once the pseudo-fields are known to be whole and usable.
    private static func writeLine(_ method: String?, _ path: String?, _ authority: String?, _ scheme: Bool, into out: inout ByteBuffer) -> Bool {
        guard let method, let path, scheme, method != "CONNECT", bytes(method, isToken), bytes(path, isRequestTarget) else { return false }
        out.writeString(method)
        out.writeStaticString(" ")
        out.writeString(path)
        out.writeStaticString(" HTTP/1.1\r\n")
        if let authority {
            out.writeStaticString("host: ")
            out.writeString(authority)
            out.writeStaticString("\r\n")
        }
        return true
    }

    private static func isToken(_ s: UnsafeRawBufferPointer) -> Bool {
        !s.isEmpty && s.allSatisfy { HTTPBytes.tokenTable[Int($0)] != 0 }
    }

    /// RFC 9113 8.2.1: field names are tokens in lower case.
    private static func isLowerToken(_ s: UnsafeRawBufferPointer) -> Bool {
        !s.isEmpty && s.allSatisfy { HTTPBytes.tokenTable[Int($0)] != 0 && !($0 >= 65 && $0 <= 90) }
    }

    /// `origin-form` or `*` (RFC 9112 3.2): no spaces, controls or DEL, which would end or
    /// bend the request line. Bytes past ASCII are left to the handler's parser.
    private static func isRequestTarget(_ s: UnsafeRawBufferPointer) -> Bool {
        guard let first = s.first, first == UInt8(ascii: "/") || (s.count == 1 && first == UInt8(ascii: "*")) else { return false }
        return s.allSatisfy { $0 > 0x20 && $0 != 0x7F }
    }

    /// RFC 9113 8.2.1: no NUL, CR or LF, no white space first or last; other controls are
    /// left to the handler's parser, which refuses them as it does from HTTP/1.1 clients.
    private static func isFieldValue(_ s: UnsafeRawBufferPointer) -> Bool {
        guard let first = s.first else { return true }
        let last = s[s.count - 1]
        if first == HTTPBytes.sp || first == HTTPBytes.htab || last == HTTPBytes.sp || last == HTTPBytes.htab { return false }
        // A plain loop: every byte of every value passes here (`contains` with a closure cost
        // about five times as much).
        for i in 0..<s.count {
            let c = s[i]
            if c <= HTTPBytes.cr, c == 0 || c == HTTPBytes.cr || c == HTTPBytes.lf { return false }
        }
        return true
    }
}

/// The handler's HTTP/1.1 response head as an HTTP/2 header block, and how its body is framed.
enum H2ResponseHead {
    /// Writes the header block: `:status`, then the fields with lower-case names, less those
    /// HTTP/2 forbids or that describe the HTTP/1.1 connection (RFC 9113 8.2.2). Returns how
    /// the body is framed and whether the answer is a gRPC one.
    static func write(_ p: UnsafeRawBufferPointer, _ head: ResponseHead, isHEAD: Bool, into block: inout ByteBuffer) -> (Body, grpc: Bool) {
        HPACKWriter.writeStatus(head.status, into: &block)
        var grpc = false
        for field in head.headers.fields {
            switch field.kind {
            case .connection, .transferEncoding, .hopByHop, .connectionNamed:
                continue
            case .other, .host, .contentLength, .xForwardedFor, .xForwardedProto, .xForwardedHost, .xRequestID, .traceparent:
                break
            }
            let name = UnsafeRawBufferPointer(rebasing: p[field.name.lower..<field.name.upper])
            let value = UnsafeRawBufferPointer(rebasing: p[field.value.lower..<field.value.upper])
            if HTTPBytes.equalsLower(p, field.name.lower, field.name.count, "content-type"), HTTPBytes.hasPrefixLower(p, field.value.lower, field.value.count, "application/grpc") {
                grpc = true
            }
            HPACKWriter.writeField(name: name, value: value, into: &block)
        }
        let body: Body
        if head.status < 200 || head.status == 204 || head.status == 304 || isHEAD {
            body = .none
        } else if head.headers.chunked {
            body = .chunked
        } else if let length = head.headers.contentLength {
            body = length == 0 ? .none : .length(length)
        } else {
            body = .untilClose
        }
        return (body, grpc)
    }

    /// The handler's trailer section (as `ChunkedDecoder.trailers` kept it) as a trailing
    /// header block, less what a trailer must not pass on; nil when nothing is left.
    static func trailers(_ raw: ByteBuffer) -> ByteBuffer? {
        var block = ByteBuffer()
        ChunkedDecoder.forEachForwardableTrailer(raw) { name, value in
            var name = name
            name.withUTF8 { n in HPACKWriter.writeField(name: UnsafeRawBufferPointer(n), value: value, into: &block) }
        }
        return block.readableBytes > 0 ? block : nil
    }

    typealias Body = H1MessageCutter.Body
}
