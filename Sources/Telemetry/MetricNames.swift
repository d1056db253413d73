import NIOConcurrencyHelpers

/// Route and upstream names as small integers, so the per-request counters key on an `Int`
/// rather than hashing strings. Names are interned when a config generation is built (the
/// control plane, under the lock) and read back at scrape time; ids are never reused, and
/// only names that appear in a config get one, so the table stays small.
public final class MetricNames: Sendable {
    public static let routes = MetricNames()
    public static let upstreams = MetricNames()

    private let table = NIOLockedValueBox<(ids: [String: Int], names: [String])>(([:], []))

    public func id(_ name: String) -> Int {
        table.withLockedValue { t in
            if let id = t.ids[name] { return id }
            let id = t.names.count
            t.names.append(name)
            t.ids[name] = id
            return id
        }
    }

    /// Every interned name, indexed by id.
    public func all() -> [String] { table.withLockedValue { $0.names } }
}

/// HTTP methods as label values: the registered ones by name, any other as `OTHER`, so a
/// client cannot grow the series with made-up methods.
public enum MethodLabel {
    public static let names = ["GET", "HEAD", "POST", "PUT", "DELETE", "PATCH", "OPTIONS", "CONNECT", "TRACE", "OTHER"]

    /// The index of the method spelled by `bytes` in `names`.
    @inline(__always)
    public static func index(_ bytes: UnsafeRawBufferPointer) -> Int {
        let n = bytes.count
        guard n >= 3, n <= 7 else { return 9 }
        let c = bytes[0]
        func eq(_ s: StaticString) -> Bool {
            guard s.utf8CodeUnitCount == n else { return false }
            let p = s.utf8Start
            for i in 0..<n where p[i] != bytes[i] { return false }
            return true
        }
        switch c {
        case UInt8(ascii: "G"): return eq("GET") ? 0 : 9
        case UInt8(ascii: "H"): return eq("HEAD") ? 1 : 9
        case UInt8(ascii: "P"): return eq("POST") ? 2 : eq("PUT") ? 3 : eq("PATCH") ? 5 : 9
        case UInt8(ascii: "D"): return eq("DELETE") ? 4 : 9
        case UInt8(ascii: "O"): return eq("OPTIONS") ? 6 : 9
        case UInt8(ascii: "C"): return eq("CONNECT") ? 7 : 9
        case UInt8(ascii: "T"): return eq("TRACE") ? 8 : 9
        default: return 9
        }
    }
}
