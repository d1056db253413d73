// Hot path: per request, no allocation.
import Config
import Telemetry
import Scripting

/// A route with everything the hot path compares kept as bytes. A class, so that holding it
/// for a request is one retain rather than one per field.
final class CompiledRoute: Sendable {
    /// Whether the `Upgrade` value at `value` in `p` names a protocol this route passes (its
    /// first token, case-insensitively: a client lists its preference first).
    func allowsUpgrade(_ p: UnsafeRawBufferPointer, _ value: ByteRange) -> Bool {
        var end = value.lower
        while end < value.upper, HTTPBytes.isTokenChar(p[end]) { end += 1 }
        let count = end - value.lower
        guard count > 0 else { return false }
        for name in upgrades where name.count == count {
            var same = true
            for k in 0..<count where HTTPBytes.lower(p[value.lower + k]) != name[k] {
                same = false
                break
            }
            if same { return true }
        }
        return false
    }

    enum HostHeader: Sendable {
        case passthrough
        case target
        case fixed([UInt8])
    }

    let name: String
    let nameBytes: [UInt8]
    /// Lower-case host without port, or nil for any.
    let host: [UInt8]?
    let path: [UInt8]
    let exact: Bool
    let methods: [[UInt8]]
    let upstream: Int
    let stripPrefix: Bool
    let hostHeader: HostHeader
    /// 0 means unlimited.
    let maxBodyBytes: Int
    /// Index of the route's policy in the generation's `ScriptProgram`, or -1 for none.
    let policy: Int
    let budget: ScriptBudget
    /// Position in the config's routes.
    let index: Int
    let retryNonIdempotent: Bool
    /// The route's name in `MetricNames.routes`.
    let metricID: Int
    /// Protocols a request may switch to (lower case); empty: none.
    let upgrades: [[UInt8]]

    init(_ route: Route, index: Int, defaultMaxBody: Int, policy: Int) {
        self.index = index
        upgrades = route.upgrade.map { Array($0.utf8) }
        metricID = MetricNames.routes.id(route.name)
        retryNonIdempotent = route.retryNonIdempotent
        self.policy = policy
        budget = route.budget
        name = route.name
        nameBytes = Array(route.name.utf8)
        host = route.host.map { Array($0.lowercased().utf8) }
        switch route.path {
        case .prefix(let p):
            path = Array(p.utf8)
            exact = false
        case .exact(let p):
            path = Array(p.utf8)
            exact = true
        }
        methods = route.methods.map { Array($0.utf8) }
        upstream = route.upstream
        stripPrefix = route.stripPrefix
        switch route.hostHeader {
        case .passthrough: hostHeader = .passthrough
        case .target: hostHeader = .target
        case .fixed(let h): hostHeader = .fixed(Array(h.utf8))
        }
        maxBodyBytes = route.maxBodyBytes ?? defaultMaxBody
    }

    @inline(__always)
    func matches(_ p: UnsafeRawBufferPointer, _ head: RequestHead) -> Bool {
        let pathStart = head.path.lower
        let pathCount = head.path.count
        if exact {
            guard pathCount == path.count, bytesEqual(p, pathStart, path) else { return false }
        } else {
            guard pathCount >= path.count, bytesEqual(p, pathStart, path) else { return false }
            // "/api" matches "/api" and "/api/x", not "/apix"; a prefix ending in "/" is plain.
            if pathCount > path.count, path.last != UInt8(ascii: "/"), p[pathStart + path.count] != UInt8(ascii: "/") {
                return false
            }
        }
        return matchesHostAndMethod(p, head)
    }

    /// The route's host and methods (its path checked already, by `RouteIndex`).
    @inline(__always)
    func matchesHostAndMethod(_ p: UnsafeRawBufferPointer, _ head: RequestHead) -> Bool {
        if !methods.isEmpty {
            var allowed = false
            for m in methods where m.count == head.method.count && bytesEqual(p, head.method.lower, m) {
                allowed = true
                break
            }
            if !allowed { return false }
        }
        if let host {
            guard let h = head.headers.host else { return false }
            var end = h.upper
            // Strip a port, but not from a bracketed IPv6 literal's inside.
            var i = end - 1
            while i > h.lower, p[i] >= 48, p[i] <= 57 { i -= 1 }
            if i > h.lower, p[i] == HTTPBytes.colon, p[i - 1] != HTTPBytes.colon { end = i }
            guard end - h.lower == host.count else { return false }
            for k in 0..<host.count where HTTPBytes.lower(p[h.lower + k]) != host[k] { return false }
        }
        return true
    }

    @inline(__always)
    func bytesEqual(_ p: UnsafeRawBufferPointer, _ start: Int, _ bytes: [UInt8]) -> Bool {
        bytes.withUnsafeBytes { b in
            memcmp(p.baseAddress! + start, b.baseAddress!, b.count) == 0
        }
    }
}

#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif
