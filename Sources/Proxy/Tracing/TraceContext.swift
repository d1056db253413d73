// Hot path: per request, no allocation.
import NIOCore

/// W3C Trace Context (`traceparent`): the gateway is a hop of the client's trace. A valid
/// incoming `traceparent` keeps its trace id and flags; otherwise a new trace starts
/// (sampled). Either way the upstream sees the gateway's own span id as its parent.
struct TraceContext {
    var traceHigh: UInt64 = 0
    var traceLow: UInt64 = 0
    var spanID: UInt64 = 0
    /// The current upstream try's span: the upstream's parent. 0 before the first try.
    var trySpanID: UInt64 = 0
    var flags: UInt8 = 1
    /// The caller's span (from its `traceparent`), 0 when the trace started here.
    var parentID: UInt64 = 0
    /// The request came with a valid `traceparent` (its sampled flag is the caller's decision).
    var continued = false

    init() {}

    init(_ p: UnsafeRawBufferPointer, _ header: ByteRange?, random: inout RequestIDGenerator) {
        spanID = random.next64() | 1
        if let header, let parsed = Self.parse(p, header) {
            (traceHigh, traceLow, parentID, flags) = parsed
            continued = true
        } else {
            traceHigh = random.next64()
            traceLow = random.next64() | 1
            flags = 1
        }
    }

    /// `version-traceid-parentid-flags`: version 00 exactly as specified; a later version
    /// at least with those four fields (its extra fields dropped). Ids of all zeros are invalid.
    static func parse(_ p: UnsafeRawBufferPointer, _ r: ByteRange) -> (UInt64, UInt64, UInt64, UInt8)? {
        let n = r.count
        guard n >= 55, p[r.lower + 2] == UInt8(ascii: "-"), p[r.lower + 35] == UInt8(ascii: "-"), p[r.lower + 52] == UInt8(ascii: "-")
        else { return nil }
        guard let version = hex(p, r.lower, 2), version != 0xFF else { return nil }
        if version == 0, n != 55 { return nil }
        if version != 0, n > 55, p[r.lower + 55] != UInt8(ascii: "-") { return nil }
        guard let high = hex(p, r.lower + 3, 16), let low = hex(p, r.lower + 19, 16), let parent = hex(p, r.lower + 36, 16),
            let flags = hex(p, r.lower + 53, 2), high | low != 0, parent != 0
        else { return nil }
        return (high, low, parent, UInt8(flags))
    }

    /// Lower-case hex only, as the spec requires.
    private static func hex(_ p: UnsafeRawBufferPointer, _ start: Int, _ count: Int) -> UInt64? {
        var v: UInt64 = 0
        for i in start..<start + count {
            let c = p[i]
            let d: UInt8
            if c >= 48, c <= 57 { d = c - 48 } else if c >= 97, c <= 102 { d = c - 87 } else { return nil }
            v = v << 4 | UInt64(d)
        }
        return v
    }

    /// `traceparent: 00-<trace id>-<span id>-<flags>` and its CRLF.
    func write(into w: inout HeadWriter) {
        w.put("traceparent: 00-")
        w.hex(traceHigh, digits: 16)
        w.hex(traceLow, digits: 16)
        w.put(byte: UInt8(ascii: "-"))
        w.hex(trySpanID != 0 ? trySpanID : spanID, digits: 16)
        w.put(byte: UInt8(ascii: "-"))
        w.hex(UInt64(flags), digits: 2)
        w.put("\r\n")
    }
}
