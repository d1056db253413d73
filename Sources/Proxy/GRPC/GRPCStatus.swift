/// gRPC's status codes for the answers the gateway makes itself to a gRPC call (a policy's
/// refusal, a route or upstream error, a timeout). gRPC clients read a call's outcome from
/// `grpc-status` and `grpc-message`, not from the HTTP status, so such an answer is HTTP 200
/// with those fields and no body (a "Trailers-Only" response, gRPC over HTTP/2 spec).
enum GRPCStatus {
    static let unknown = 2
    static let deadlineExceeded = 4
    static let permissionDenied = 7
    static let resourceExhausted = 8
    static let unimplemented = 12
    static let `internal` = 13
    static let unavailable = 14
    static let unauthenticated = 16

    /// The gRPC status for an HTTP status the gateway answers with: gRPC's own table
    /// ("HTTP to gRPC Status Code Mapping"), except that the gateway's 429 (a rate limit)
    /// is RESOURCE_EXHAUSTED and its 504 (a deadline) DEADLINE_EXCEEDED, as they mean here.
    static func code(forHTTP status: Int) -> Int {
        switch status {
        case 400, 431, 500: return `internal`
        case 401: return unauthenticated
        case 403: return permissionDenied
        case 404, 405, 501: return unimplemented
        case 408, 504: return deadlineExceeded
        case 413, 429: return resourceExhausted
        case 502, 503: return unavailable
        default: return unknown
        }
    }

    /// `grpc-message`: percent-encoded UTF-8, bytes outside printable ASCII and `%` escaped
    /// (gRPC over HTTP/2 spec), at most 512 bytes of the message.
    static func encodeMessage(_ message: some Collection<UInt8>) -> String {
        var out: [UInt8] = []
        out.reserveCapacity(min(message.count, 512) + 16)
        let hex = Array("0123456789ABCDEF".utf8)
        for byte in message.prefix(512) {
            if byte >= 0x20, byte <= 0x7E, byte != UInt8(ascii: "%") {
                out.append(byte)
            } else {
                out.append(UInt8(ascii: "%"))
                out.append(hex[Int(byte >> 4)])
                out.append(hex[Int(byte & 0xF)])
            }
        }
        return String(decoding: out, as: UTF8.self)
    }
}
