import NIOCore

/// What a request's access phase changed, applied when the upstream head is written.
struct RequestEdits {
    var headers = HeaderEdits()
    /// The path the upstream gets, in place of the route's (strip_prefix) result.
    var path: [UInt8]?
    /// The query without `?`; empty means none.
    var query: [UInt8]?
    /// Index of the upstream the script chose.
    var upstream: Int?
    /// The script answered itself: no upstream.
    var early: EarlyResponse?
    /// The body the upstream gets, read or replaced by the script (sent with Content-Length).
    var body: ByteBuffer?
    /// `upstream.target(host, port)`: this request goes there, not to a balancer's pick.
    var target: (key: TargetKey, address: SocketAddress)?
    /// `upstream.options{...}`: this request's tries, try timeout and hash key.
    var retries: Int?
    var tryTimeout: TimeAmount?
    var hashKey: UInt64?

    var changesHead: Bool { !headers.isEmpty || path != nil || query != nil || body != nil }

    mutating func reset() {
        headers.removeAll()
        path = nil
        query = nil
        upstream = nil
        early = nil
        body = nil
        target = nil
        retries = nil
        tryTimeout = nil
        hashKey = nil
    }
}

/// An answer a script gives with `request.respond`.
struct EarlyResponse {
    var status: Int
    var headers = HeaderEdits()
    var body: ByteBuffer
    /// The body is the gateway's JSON error.
    var json = false
}

/// What a response phase changed, applied when the client head is written.
struct ResponseEdits {
    var status: Int?
    var headers = HeaderEdits()
    /// The body the client gets, read or replaced by the script (sent with Content-Length).
    var body: ByteBuffer?

    var isEmpty: Bool { status == nil && headers.isEmpty }

    mutating func reset() {
        status = nil
        headers.removeAll()
        body = nil
    }
}

/// A script suspended until the request body has arrived.
struct BodyWait {
    /// Largest body accepted.
    var max: Int
    /// For `set_body`: what replaces the body once it is read.
    var replacement: ByteBuffer?

    /// Raw bytes (chunk framing included) held while waiting, before reads pause.
    var bufferLimit: Int { max * 2 + 64 * 1024 }
}

/// Where collecting a whole body stands.
enum BodyCollect {
    case done(ByteBuffer)
    case tooLarge
    case pending
    case malformed
}

extension ChunkedDecoder {
    /// Decodes a whole chunked body (at most `max` data bytes) from `buffer`. Only when it
    /// is `.done` do `buffer` and the decoder move past it; otherwise nothing is consumed.
    mutating func collect(_ buffer: inout ByteBuffer, max: Int) -> BodyCollect {
        var decoder = self
        var rest = buffer
        var body = ByteBuffer()
        do {
            while let event = try decoder.next(&rest) {
                switch event {
                case .data(var slice):
                    if body.readableBytes + slice.readableBytes > max { return .tooLarge }
                    body.writeBuffer(&slice)
                case .end:
                    self = decoder
                    buffer = rest
                    return .done(body)
                }
            }
        } catch {
            return .malformed
        }
        return .pending
    }
}
