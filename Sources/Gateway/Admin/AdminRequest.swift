import Config
import NIOHTTP1

/// One admin request, read whole (bodies are small and bounded: `AdminServer.maxBodyBytes`).
struct AdminRequest: Sendable {
    var method: HTTPMethod
    /// The path's segments, percent-decoded (`/v1/scripts/lib/a.lua` → `v1`, `scripts`, `lib`, `a.lua`).
    var segments: [String]
    var path: String
    var query: [String: String]
    var headers: HTTPHeaders
    var body: [UInt8]

    /// Nil when the target cannot be decoded (a bad `%` escape or a NUL).
    init?(head: HTTPRequestHead, body: [UInt8]) {
        method = head.method
        headers = head.headers
        self.body = body
        let parts = head.uri.split(separator: "?", maxSplits: 1, omittingEmptySubsequences: false)
        path = String(parts.first ?? "")
        var segments: [String] = []
        for raw in path.split(separator: "/", omittingEmptySubsequences: true) {
            guard let segment = Self.percentDecoded(raw) else { return nil }
            segments.append(segment)
        }
        self.segments = segments
        var query: [String: String] = [:]
        if parts.count > 1 {
            for pair in parts[1].split(separator: "&") {
                let kv = pair.split(separator: "=", maxSplits: 1, omittingEmptySubsequences: false)
                guard let key = Self.percentDecoded(kv[0]), let value = Self.percentDecoded(kv.count > 1 ? kv[1] : "") else { return nil }
                query[key] = value
            }
        }
        self.query = query
    }

    static func percentDecoded(_ text: Substring) -> String? {
        var bytes: [UInt8] = []
        var utf8 = text.utf8.makeIterator()
        while let byte = utf8.next() {
            if byte == UInt8(ascii: "%") {
                guard let a = utf8.next(), let b = utf8.next(), let hi = hex(a), let lo = hex(b) else { return nil }
                bytes.append(hi << 4 | lo)
            } else {
                bytes.append(byte)
            }
        }
        guard !bytes.contains(0), let decoded = String(validating: bytes, as: UTF8.self) else { return nil }
        return decoded
    }

    private static func hex(_ c: UInt8) -> UInt8? {
        switch c {
        case UInt8(ascii: "0")...UInt8(ascii: "9"): return c - UInt8(ascii: "0")
        case UInt8(ascii: "a")...UInt8(ascii: "f"): return c - UInt8(ascii: "a") + 10
        case UInt8(ascii: "A")...UInt8(ascii: "F"): return c - UInt8(ascii: "A") + 10
        default: return nil
        }
    }

    /// `If-Match`'s version: nil when absent, `.any` for `*`, `.version(n)` for `"n"`, and
    /// `.tag(s)` for any other entity tag (a file's digest).
    enum Precondition: Equatable {
        case any
        case tag(String)
    }

    var ifMatch: Precondition? {
        guard let value = headers.first(name: "if-match").map({ String($0.trimmingSpaces()) }), !value.isEmpty else { return nil }
        if value == "*" { return .any }
        var tag = Substring(value)
        if tag.hasPrefix("W/") { tag = tag.dropFirst(2) }
        if tag.hasPrefix("\""), tag.hasSuffix("\""), tag.count >= 2 { tag = tag.dropFirst().dropLast() }
        return .tag(String(tag))
    }

    var dryRun: Bool { query["dry_run"].map { $0 == "true" || $0 == "1" } ?? false }
}

/// An admin answer: status, body and its type, and extra headers (`ETag`, `Allow`, ...).
struct AdminResponse: Sendable {
    var status: Int
    var contentType: String
    var body: String
    var headers: [(String, String)] = []

    static func json(_ status: Int, _ body: String) -> AdminResponse {
        AdminResponse(status: status, contentType: "application/json", body: body + "\n")
    }

    static func json(_ status: Int, _ value: JSONValue, etag: String? = nil) -> AdminResponse {
        var response = AdminResponse(status: status, contentType: "application/json", body: value.prettyText + "\n")
        if let etag { response.headers.append(("ETag", "\"\(etag)\"")) }
        return response
    }

    static func error(_ status: Int, _ message: String, _ extra: [String: JSONValue] = [:]) -> AdminResponse {
        var members = extra
        members["error"] = .string(message)
        return .json(status, .object(members))
    }

    static func problems(_ problems: [ConfigProblem]) -> AdminResponse {
        .json(422, .object(["errors": .array(problems.map(\.json))]))
    }

    static func methodNotAllowed(_ allowed: [String]) -> AdminResponse {
        var response = error(405, "method not allowed (allowed: \(allowed.joined(separator: ", ")))")
        response.headers.append(("Allow", allowed.joined(separator: ", ")))
        return response
    }
}
