// Hot path: per request, no allocation beyond the reused field table.
import NIOCore

/// Limits enforced while parsing a head, copied from the generation's config.
struct HeadLimits {
    var maxHeaderBytes: Int
    var maxHeaderCount: Int
    var maxURIBytes: Int
}

/// Header-field state common to requests and responses, reused across a connection's messages
/// so that its arrays keep their capacity.
struct ParsedFields {
    var fields: [HeaderField] = []
    var connectionTokens: [ByteRange] = []
    var contentLength: Int? = nil
    /// `Transfer-Encoding: chunked` (the only coding accepted).
    var chunked = false
    var connectionClose = false
    var connectionKeepAlive = false
    var host: ByteRange? = nil
    var requestID: ByteRange? = nil
    /// W3C `traceparent`, replaced by the gateway's own on the way upstream.
    var traceparent: ByteRange? = nil
    /// The `Upgrade` field's value (hop-by-hop: forwarded only for a route that passes it).
    var upgrade: ByteRange? = nil
    /// `Connection` lists `upgrade`.
    var connectionUpgrade = false
    /// `Content-Type: application/grpc` (or `application/grpc+proto`, ...): a gRPC call, whose
    /// errors the gateway answers as gRPC statuses.
    var grpc = false
    /// `grpc-timeout`: the caller's deadline, which bounds the request as `timeouts.request` does.
    var grpcTimeout: TimeAmount? = nil

    mutating func reset() {
        fields.removeAll(keepingCapacity: true)
        connectionTokens.removeAll(keepingCapacity: true)
        contentLength = nil
        chunked = false
        connectionClose = false
        connectionKeepAlive = false
        host = nil
        requestID = nil
        traceparent = nil
        upgrade = nil
        connectionUpgrade = false
        grpc = false
        grpcTimeout = nil
    }
}

/// A parsed request head; ranges point into the head's own bytes.
struct RequestHead {
    var method = ByteRange.empty
    var target = ByteRange.empty
    /// The target up to `?`.
    var path = ByteRange.empty
    var minorVersion: UInt8 = 1
    var isHEAD = false
    /// GET, HEAD, OPTIONS, TRACE, PUT or DELETE (RFC 9110 9.2.2): safe to send again.
    var isIdempotent = false
    var framing = BodyFraming.none
    var keepAlive = true
    var expectContinue = false
    var headers = ParsedFields()
}

/// A parsed response head.
struct ResponseHead {
    var status = 0
    /// The status line without its CRLF.
    var statusLine = ByteRange.empty
    var minorVersion: UInt8 = 1
    var keepAlive = true
    var headers = ParsedFields()
}

enum HeadParser {
    /// Index just past the blank line that ends a head, searching from `from`; `nil` if not there yet.
    /// A bare `LF LF` ends it too, so that the line parser can refuse it at once instead of waiting.
    @inline(__always)
    static func findEnd(_ p: UnsafeRawBufferPointer, from: Int) -> Int? {
        var i = max(from, 1)
        let n = p.count
        while true {
            i = HTTPBytes.firstLF(p, from: i, end: n)
            guard i < n else { return nil }
            if p[i - 1] == HTTPBytes.lf { return i + 1 }
            if i >= 3, p[i - 1] == HTTPBytes.cr, p[i - 2] == HTTPBytes.lf, p[i - 3] == HTTPBytes.cr { return i + 1 }
            i += 1
        }
    }

    /// Whether the request line is complete within `p`; used to tell 414 from 431 for oversized heads.
    static func requestLineEnd(_ p: UnsafeRawBufferPointer) -> Int? {
        for i in 0..<p.count where p[i] == HTTPBytes.lf { return i }
        return nil
    }

    /// Parses a complete request head (`p` ends with its blank line). RFC 9112 sections 3, 5, 6.
    static func parseRequest(_ p: UnsafeRawBufferPointer, into head: inout RequestHead, limits: HeadLimits) throws(HeadError) {
        head.headers.reset()
        var i = 0
        let n = p.count
        // method SP
        while i < n, HTTPBytes.isTokenChar(p[i]) { i += 1 }
        guard i > 0, i < n, p[i] == HTTPBytes.sp else { throw .malformed("malformed request line") }
        head.method = ByteRange(0, i)
        head.isHEAD = i == 4 && p[0] == UInt8(ascii: "H") && p[1] == UInt8(ascii: "E") && p[2] == UInt8(ascii: "A") && p[3] == UInt8(ascii: "D")
        // RFC 9110 9.2.2, less TRACE (a retry may resend a request; TRACE has no use for that).
        head.isIdempotent =
            head.isHEAD || HTTPBytes.equals(p, 0, i, "GET") || HTTPBytes.equals(p, 0, i, "PUT") || HTTPBytes.equals(p, 0, i, "DELETE")
            || HTTPBytes.equals(p, 0, i, "OPTIONS")
            || HTTPBytes.equals(p, 0, i, "DELETE") || HTTPBytes.equals(p, 0, i, "OPTIONS") || HTTPBytes.equals(p, 0, i, "TRACE")
        i += 1
        // request-target SP
        let targetStart = i
        var queryAt = -1
        while i < n, HTTPBytes.isTargetChar(p[i]) {
            if p[i] == UInt8(ascii: "?"), queryAt < 0 { queryAt = i }
            i += 1
        }
        let targetEnd = i
        if targetEnd - targetStart > limits.maxURIBytes { throw .uriTooLong }
        guard targetEnd > targetStart, i < n, p[i] == HTTPBytes.sp else { throw .malformed("malformed request line") }
        head.target = ByteRange(targetStart, targetEnd)
        head.path = ByteRange(targetStart, queryAt < 0 ? targetEnd : queryAt)
        i += 1
        // HTTP-version CRLF
        guard i + 10 <= n, p[i] == UInt8(ascii: "H"), p[i + 1] == UInt8(ascii: "T"), p[i + 2] == UInt8(ascii: "T"),
            p[i + 3] == UInt8(ascii: "P"), p[i + 4] == UInt8(ascii: "/")
        else { throw .malformed("malformed request line") }
        let major = p[i + 5] &- 48
        let minor = p[i + 7] &- 48
        guard major < 10, p[i + 6] == UInt8(ascii: "."), minor < 10 else { throw .malformed("malformed request line") }
        guard major == 1 else { throw .unsupportedVersion }
        guard p[i + 8] == HTTPBytes.cr, p[i + 9] == HTTPBytes.lf else { throw .malformed("malformed request line") }
        head.minorVersion = minor
        i += 10

        try parseFields(p, from: i, into: &head.headers, limits: limits)
        let h = head.headers
        if h.chunked {
            // RFC 9112 6.1: Transfer-Encoding with Content-Length is a smuggling attempt; in
            // HTTP/1.0 it cannot be trusted at all.
            if h.contentLength != nil { throw .malformed("both Content-Length and Transfer-Encoding") }
            if minor == 0 { throw .malformed("Transfer-Encoding in an HTTP/1.0 request") }
            head.framing = .chunked
        } else if let length = h.contentLength {
            head.framing = length > 0 ? .contentLength(length) : .none
        } else {
            head.framing = .none
        }
        if minor >= 1, h.host == nil { throw .malformed("missing Host header") }
        head.keepAlive = minor >= 1 ? !h.connectionClose : (h.connectionKeepAlive && !h.connectionClose)
        head.expectContinue = false
        for f in h.fields where f.kind == .other && HTTPBytes.equalsLower(p, f.name.lower, f.name.count, "expect") {
            head.expectContinue = HTTPBytes.equalsLower(p, f.value.lower, f.value.count, "100-continue")
        }
    }

    /// Parses a complete response head.
    static func parseResponse(_ p: UnsafeRawBufferPointer, into head: inout ResponseHead, limits: HeadLimits) throws(HeadError) {
        head.headers.reset()
        let n = p.count
        guard n >= 14, p[0] == UInt8(ascii: "H"), p[1] == UInt8(ascii: "T"), p[2] == UInt8(ascii: "T"),
            p[3] == UInt8(ascii: "P"), p[4] == UInt8(ascii: "/"), p[5] == UInt8(ascii: "1"), p[6] == UInt8(ascii: "."),
            p[8] == HTTPBytes.sp
        else { throw .malformed("malformed status line") }
        let minor = p[7] &- 48
        let d0 = p[9] &- 48, d1 = p[10] &- 48, d2 = p[11] &- 48
        guard minor < 10, d0 < 10, d1 < 10, d2 < 10, d0 >= 1 else { throw .malformed("malformed status line") }
        head.minorVersion = minor
        head.status = Int(d0) * 100 + Int(d1) * 10 + Int(d2)
        var i = 12
        while i < n, p[i] != HTTPBytes.cr, p[i] != HTTPBytes.lf {
            guard HTTPBytes.isFieldValueChar(p[i]) else { throw .malformed("malformed status line") }
            i += 1
        }
        guard i + 1 < n, p[i] == HTTPBytes.cr, p[i + 1] == HTTPBytes.lf else { throw .malformed("malformed status line") }
        head.statusLine = ByteRange(0, i)
        try parseFields(p, from: i + 2, into: &head.headers, limits: limits)
        if head.headers.chunked, head.headers.contentLength != nil {
            throw .malformed("both Content-Length and Transfer-Encoding")
        }
        head.keepAlive = minor >= 1 ? !head.headers.connectionClose : head.headers.connectionKeepAlive && !head.headers.connectionClose
    }

    /// Field lines up to the blank line: `name ":" OWS value OWS CRLF` (RFC 9112 5).
    private static func parseFields(
        _ p: UnsafeRawBufferPointer, from start: Int, into h: inout ParsedFields, limits: HeadLimits
    ) throws(HeadError) {
        var i = start
        let n = p.count
        let tokens = HTTPBytes.tokenTable
        while true {
            guard i < n else { throw .malformed("truncated head") }
            if p[i] == HTTPBytes.cr {
                guard i + 1 < n, p[i + 1] == HTTPBytes.lf else { throw .malformed("bare CR in head") }
                break
            }
            // RFC 9112 5.2: obsolete line folding is refused, not unfolded.
            if p[i] == HTTPBytes.sp || p[i] == HTTPBytes.htab { throw .malformed("obsolete line folding") }
            let lineStart = i
            while i < n, tokens[Int(p[i])] != 0 { i += 1 }
            // A space before the colon is a smuggling vector (RFC 9112 5.1): refuse it.
            guard i > lineStart, i < n, p[i] == HTTPBytes.colon else { throw .malformed("invalid header name") }
            let name = ByteRange(lineStart, i)
            i += 1
            while i < n, p[i] == HTTPBytes.sp || p[i] == HTTPBytes.htab { i += 1 }
            let valueStart = i
            i = HTTPBytes.valueEnd(p, from: i, end: n)
            var valueEnd = i
            guard i + 1 < n, p[i] == HTTPBytes.cr, p[i + 1] == HTTPBytes.lf else { throw .malformed("invalid header value") }
            while valueEnd > valueStart, p[valueEnd - 1] == HTTPBytes.sp || p[valueEnd - 1] == HTTPBytes.htab { valueEnd -= 1 }
            i += 2
            guard h.fields.count < limits.maxHeaderCount else { throw .headerTooLarge }
            let value = ByteRange(valueStart, valueEnd)
            let kind = try classify(p, name: name, value: value, into: &h)
            h.fields.append(HeaderField(name: name, value: value, line: ByteRange(lineStart, i), kind: kind))
        }
        if !h.connectionTokens.isEmpty {
            for k in h.fields.indices where h.fields[k].kind == .other {
                let name = h.fields[k].name
                for token in h.connectionTokens where token.count == name.count && equalFold(p, token, name) {
                    h.fields[k].kind = .connectionNamed
                }
            }
        }
    }

    @inline(__always)
    private static func classify(
        _ p: UnsafeRawBufferPointer, name: ByteRange, value: ByteRange, into h: inout ParsedFields
    ) throws(HeadError) -> FieldKind {
        let s = name.lower, c = name.count
        switch c {
        case 4:
            if HTTPBytes.equalsLower(p, s, c, "host") {
                guard h.host == nil else { throw .malformed("duplicate Host header") }
                h.host = value
                return .host
            }
        case 2:
            if HTTPBytes.equalsLower(p, s, c, "te") { return .hopByHop }
        case 7:
            if HTTPBytes.equalsLower(p, s, c, "trailer") { return .hopByHop }
            if HTTPBytes.equalsLower(p, s, c, "upgrade") {
                // Two Upgrade fields are ambiguous: neither is passed on.
                h.upgrade = h.upgrade == nil ? value : ByteRange.empty
                return .hopByHop
            }
        case 10:
            if HTTPBytes.equalsLower(p, s, c, "connection") {
                try connectionTokens(p, value, into: &h)
                return .connection
            }
            if HTTPBytes.equalsLower(p, s, c, "keep-alive") { return .hopByHop }
        case 11:
            if HTTPBytes.equalsLower(p, s, c, "traceparent") {
                h.traceparent = value
                return .traceparent
            }
        case 12:
            if HTTPBytes.equalsLower(p, s, c, "x-request-id") {
                h.requestID = value
                return .xRequestID
            }
            if HTTPBytes.equalsLower(p, s, c, "content-type") {
                h.grpc = value.count >= 16 && HTTPBytes.hasPrefixLower(p, value.lower, value.count, "application/grpc")
            } else if HTTPBytes.equalsLower(p, s, c, "grpc-timeout") {
                h.grpcTimeout = grpcTimeout(p, value)
            }
        case 14:
            if HTTPBytes.equalsLower(p, s, c, "content-length") {
                // RFC 9112 6.3: duplicates (even equal ones, even as a list) and anything but
                // digits are refused; a proxy must not guess which one the origin will use.
                guard h.contentLength == nil, let length = HTTPBytes.parseDecimal(p, value.lower, value.upper) else {
                    throw .malformed("invalid or duplicate Content-Length")
                }
                h.contentLength = length
                return .contentLength
            }
        case 15:
            if HTTPBytes.equalsLower(p, s, c, "x-forwarded-for") { return .xForwardedFor }
        case 16:
            if HTTPBytes.equalsLower(p, s, c, "x-forwarded-host") { return .xForwardedHost }
        case 17:
            if HTTPBytes.equalsLower(p, s, c, "transfer-encoding") {
                // Only a single "chunked" is accepted: anything else either cannot be framed
                // (RFC 9112 6.3 item 4) or is a known desync trick ("chunked, chunked", "xchunked").
                guard !h.chunked else { throw .malformed("duplicate Transfer-Encoding") }
                guard HTTPBytes.equalsLower(p, value.lower, value.count, "chunked") else {
                    if value.isEmpty { throw .malformed("empty Transfer-Encoding") }
                    throw .unsupportedTransferCoding
                }
                h.chunked = true
                return .transferEncoding
            }
            if HTTPBytes.equalsLower(p, s, c, "x-forwarded-proto") { return .xForwardedProto }
        case 19:
            if HTTPBytes.equalsLower(p, s, c, "proxy-authorization") { return .hopByHop }
        default:
            break
        }
        if c > 6, HTTPBytes.hasPrefixLower(p, s, c, "proxy-") { return .hopByHop }
        return .other
    }

    /// `grpc-timeout` (gRPC over HTTP/2): 1 to 8 digits and a unit, H M S m u n; nil when
    /// malformed (the call then has no deadline of its own, as gRPC servers read it).
    static func grpcTimeout(_ p: UnsafeRawBufferPointer, _ value: ByteRange) -> TimeAmount? {
        let n = value.count
        guard n >= 2, n <= 9, let amount = HTTPBytes.parseDecimal(p, value.lower, value.upper - 1) else { return nil }
        switch p[value.upper - 1] {
        case UInt8(ascii: "H"): return .hours(Int64(amount))
        case UInt8(ascii: "M"): return .minutes(Int64(amount))
        case UInt8(ascii: "S"): return .seconds(Int64(amount))
        case UInt8(ascii: "m"): return .milliseconds(Int64(amount))
        case UInt8(ascii: "u"): return .microseconds(Int64(amount))
        case UInt8(ascii: "n"): return .nanoseconds(Int64(amount))
        default: return nil
        }
    }

    /// Connection: a comma list of tokens; `close` and `keep-alive` are noted, others name
    /// fields that are hop-by-hop for this message.
    private static func connectionTokens(_ p: UnsafeRawBufferPointer, _ value: ByteRange, into h: inout ParsedFields) throws(HeadError) {
        var i = value.lower
        let end = value.upper
        while i < end {
            while i < end, p[i] == HTTPBytes.sp || p[i] == HTTPBytes.htab || p[i] == UInt8(ascii: ",") { i += 1 }
            let start = i
            while i < end, HTTPBytes.isTokenChar(p[i]) { i += 1 }
            if i == start {
                if i < end { throw .malformed("invalid Connection header") }
                break
            }
            let count = i - start
            if HTTPBytes.equalsLower(p, start, count, "close") {
                h.connectionClose = true
            } else if HTTPBytes.equalsLower(p, start, count, "keep-alive") {
                h.connectionKeepAlive = true
            } else if HTTPBytes.equalsLower(p, start, count, "upgrade") {
                h.connectionUpgrade = true
            } else if h.connectionTokens.count < 32 {
                h.connectionTokens.append(ByteRange(start, i))
            }
        }
    }

    @inline(__always)
    private static func equalFold(_ p: UnsafeRawBufferPointer, _ a: ByteRange, _ b: ByteRange) -> Bool {
        for k in 0..<a.count where HTTPBytes.lower(p[a.lower + k]) != HTTPBytes.lower(p[b.lower + k]) { return false }
        return true
    }
}
