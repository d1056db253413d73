// Hot path: per body chunk, no allocation (data comes out as slices of the read buffer).
import NIOCore

/// Decodes `Transfer-Encoding: chunked` (RFC 9112 7.1) incrementally. Data comes out as slices
/// of the input; framing errors (bad sizes, missing CRLFs, oversized extensions or trailers)
/// end the message, because a proxy that guesses here is a proxy that can be desynced.
struct ChunkedDecoder {
    enum Event {
        case data(ByteBuffer)
        case end
    }

    enum Failure: Error {
        case badChunkSize
        case badFraming
        case trailersTooLarge
    }

    private enum State {
        case size(value: Int, digits: Int)
        case extensions(value: Int)
        case sizeLF(value: Int)
        case data(remaining: Int)
        case dataCR
        case dataLF
        case trailerLineStart
        case trailerLine
        case trailerLF(blank: Bool)
        case done
    }

    private var state = State.size(value: 0, digits: 0)
    private var metaBytes = 0
    /// The trailer section's field lines as they came (each with its CRLF), once there is one:
    /// passed on to the client (gRPC's status travels there). Bounded by `maxMetaBytes`.
    private(set) var trailers: ByteBuffer?
    /// Bytes allowed for chunk extensions and trailers together, per message.
    static let maxMetaBytes = 16 * 1024

    /// The next piece of the body from `buffer`: a data slice, the end, or nil when `buffer`
    /// holds no more complete piece. After `.end`, what follows the message stays in `buffer`.
    mutating func next(_ buffer: inout ByteBuffer) throws(Failure) -> Event? {
        while buffer.readableBytes > 0 {
            switch state {
            case .data(let remaining):
                let take = min(remaining, buffer.readableBytes)
                let slice = buffer.readSlice(length: take)!
                state = remaining == take ? .dataCR : .data(remaining: remaining - take)
                return .data(slice)
            case .done:
                return nil
            default:
                break
            }
            let c = buffer.readInteger(as: UInt8.self)!
            switch state {
            case .size(let value, let digits):
                if let d = Self.hexValue(c) {
                    // 15 hex digits cap a chunk at 2^60: no overflow, and no real body is larger.
                    guard digits < 15 else { throw .badChunkSize }
                    state = .size(value: value << 4 | d, digits: digits + 1)
                } else if digits == 0 {
                    throw .badChunkSize
                } else if c == HTTPBytes.cr {
                    state = .sizeLF(value: value)
                } else if c == UInt8(ascii: ";") || c == HTTPBytes.sp || c == HTTPBytes.htab {
                    state = .extensions(value: value)
                    try countMeta()
                } else {
                    throw .badChunkSize
                }
            case .extensions(let value):
                if c == HTTPBytes.cr {
                    state = .sizeLF(value: value)
                } else if c == HTTPBytes.lf || !HTTPBytes.isFieldValueChar(c) {
                    throw .badFraming
                } else {
                    try countMeta()
                }
            case .sizeLF(let value):
                guard c == HTTPBytes.lf else { throw .badFraming }
                state = value == 0 ? .trailerLineStart : .data(remaining: value)
            case .dataCR:
                guard c == HTTPBytes.cr else { throw .badFraming }
                state = .dataLF
            case .dataLF:
                guard c == HTTPBytes.lf else { throw .badFraming }
                state = .size(value: 0, digits: 0)
            case .trailerLineStart:
                if c == HTTPBytes.cr {
                    state = .trailerLF(blank: true)
                } else {
                    guard HTTPBytes.isTokenChar(c) else { throw .badFraming }
                    state = .trailerLine
                    try countMeta()
                    keepTrailer(c)
                }
            case .trailerLine:
                if c == HTTPBytes.cr {
                    state = .trailerLF(blank: false)
                } else {
                    guard HTTPBytes.isFieldValueChar(c) || c == HTTPBytes.colon else { throw .badFraming }
                    try countMeta()
                }
                keepTrailer(c)
            case .trailerLF(let blank):
                guard c == HTTPBytes.lf else { throw .badFraming }
                if blank {
                    state = .done
                    return .end
                }
                keepTrailer(c)
                state = .trailerLineStart
            case .data, .done:
                preconditionFailure("handled above")
            }
        }
        return nil
    }

    private mutating func keepTrailer(_ c: UInt8) {
        if trailers == nil { trailers = ByteBuffer() }
        trailers!.writeInteger(c)
    }

    /// The trailer fields a proxy passes on, as `name: value` lines with CRLFs (nil when none
    /// is left): see `forEachForwardableTrailer`.
    static func forwardableTrailers(_ raw: ByteBuffer) -> ByteBuffer? {
        var out = ByteBuffer()
        forEachForwardableTrailer(raw) { name, value in
            out.writeString(name)
            out.writeStaticString(": ")
            out.writeBytes(value)
            out.writeStaticString("\r\n")
        }
        return out.readableBytes > 0 ? out : nil
    }

    /// Each trailer field of `raw` (as `trailers` kept it) that a proxy passes on, its name
    /// in lower case: well-formed lines only, and none of those a trailer must not carry or
    /// that describe this hop (RFC 9110 6.5.1: framing, routing, connection fields).
    static func forEachForwardableTrailer(_ raw: ByteBuffer, _ body: (String, UnsafeRawBufferPointer) -> Void) {
        raw.withUnsafeReadableBytes { p in
            var i = 0
            while i < p.count {
                var end = i
                while end < p.count, p[end] != HTTPBytes.cr { end += 1 }
                defer { i = end + 2 }
                guard let colon = (i..<end).first(where: { p[$0] == HTTPBytes.colon }), colon > i,
                    (i..<colon).allSatisfy({ HTTPBytes.isTokenChar(p[$0]) })
                else { continue }
                let name = String(decoding: UnsafeRawBufferPointer(rebasing: p[i..<colon]), as: UTF8.self).lowercased()
                if name.hasPrefix("proxy-") || forbiddenTrailers.contains(name) { continue }
                var v = colon + 1
                while v < end, p[v] == HTTPBytes.sp || p[v] == HTTPBytes.htab { v += 1 }
                body(name, UnsafeRawBufferPointer(rebasing: p[v..<end]))
            }
        }
    }

    static let forbiddenTrailers: Set<String> = [
        "content-length", "transfer-encoding", "host", "connection", "keep-alive", "te", "trailer", "upgrade",
        "content-type", "content-encoding", "content-range", "authorization", "set-cookie", "cache-control", "expect",
    ]

    private mutating func countMeta() throws(Failure) {
        metaBytes += 1
        if metaBytes > Self.maxMetaBytes { throw .trailersTooLarge }
    }

    @inline(__always)
    private static func hexValue(_ c: UInt8) -> Int? {
        switch c {
        case 48...57: return Int(c - 48)
        case 65...70: return Int(c - 55)
        case 97...102: return Int(c - 87)
        default: return nil
        }
    }
}
