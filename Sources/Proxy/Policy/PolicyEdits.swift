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

    var changesHead: Bool { !headers.isEmpty || path != nil || query != nil }

    mutating func reset() {
        headers.removeAll()
        path = nil
        query = nil
        upstream = nil
        early = nil
    }
}

/// An answer a script gives with `request.respond`.
struct EarlyResponse {
    var status: Int
    var headers = HeaderEdits()
    var body: ByteBuffer
}

/// What a response phase changed, applied when the client head is written.
struct ResponseEdits {
    var status: Int?
    var headers = HeaderEdits()

    var isEmpty: Bool { status == nil && headers.isEmpty }

    mutating func reset() {
        status = nil
        headers.removeAll()
    }
}
