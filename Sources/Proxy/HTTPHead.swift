// Hot path: per request, no allocation beyond the reused field table.

/// What a header field means to the proxy. Everything else is forwarded as it came.
enum FieldKind: UInt8 {
    case other
    case host
    case contentLength
    case transferEncoding
    case connection
    /// Keep-Alive, TE, Trailer, Upgrade, Proxy-*: hop-by-hop (RFC 9110 7.6.1), never forwarded.
    case hopByHop
    case xForwardedFor
    case xForwardedProto
    case xForwardedHost
    case xRequestID
    /// W3C trace context: the gateway forwards its own, continuing the client's trace.
    case traceparent
    /// Named by the Connection header: hop-by-hop for this message only.
    case connectionNamed
}

/// One header line of a parsed head: where its name, value and whole line sit in the head bytes.
struct HeaderField {
    var name: ByteRange
    var value: ByteRange
    /// The whole line with its CRLF, copied as-is when the field is forwarded.
    var line: ByteRange
    var kind: FieldKind
}

/// How a message body is delimited (RFC 9112 6.3).
enum BodyFraming: Equatable {
    case none
    case contentLength(Int)
    case chunked
    /// Response only: the body runs until the upstream closes.
    case untilClose
}

/// Why a head was refused; each maps to one client-facing status.
enum HeadError: Error, Equatable {
    case malformed(String)  // 400
    case headerTooLarge  // 431
    case uriTooLong  // 414
    case unsupportedVersion  // 505
    case unsupportedTransferCoding  // 501

    var status: Int {
        switch self {
        case .malformed: return 400
        case .headerTooLarge: return 431
        case .uriTooLong: return 414
        case .unsupportedVersion: return 505
        case .unsupportedTransferCoding: return 501
        }
    }

    var message: String {
        switch self {
        case .malformed(let why): return why
        case .headerTooLarge: return "request header fields too large"
        case .uriTooLong: return "request URI too long"
        case .unsupportedVersion: return "HTTP version not supported"
        case .unsupportedTransferCoding: return "transfer coding not implemented"
        }
    }
}
