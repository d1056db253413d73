// Hot path: per request, no allocation.
//
// Byte classes and small helpers shared by the head parser and the writers. Hand-written
// instead of NIOHTTP1's typed parts: the bench README measured typed parts at half of
// nginx's speed, byte scanning on the ByteBuffer at about even.

#if canImport(Glibc)
import Glibc
#endif

enum HTTPBytes {
    static let cr: UInt8 = 13
    static let lf: UInt8 = 10
    static let sp: UInt8 = 32
    static let htab: UInt8 = 9
    static let colon: UInt8 = 58

    /// RFC 9110 5.6.2 `tchar` as two 64-bit masks: constants, so a check is a shift and a test
    /// (a table in a global costs a lazy-initialisation check per byte).
    @inline(__always) static func isTokenChar(_ c: UInt8) -> Bool {
        // ! # $ % & ' * + - . 0-9 in 0..63; A-Z ^ _ ` a-z | ~ in 64..127.
        let low: UInt64 = 0x03FF_6CFA_0000_0000
        let high: UInt64 = 0x57FF_FFFF_C7FF_FFFE
        if c < 64 { return (low >> UInt64(c)) & 1 == 1 }
        if c < 128 { return (high >> UInt64(c - 64)) & 1 == 1 }
        return false
    }

    /// Bytes allowed in a request target: visible ASCII (RFC 9112 3.2; no spaces, no CTLs).
    @inline(__always) static func isTargetChar(_ c: UInt8) -> Bool { c > 0x20 && c < 0x7F }

    /// Bytes allowed in a field value: VCHAR, obs-text, SP, HTAB (RFC 9110 5.5).
    @inline(__always) static func isFieldValueChar(_ c: UInt8) -> Bool { c >= 0x20 ? c != 0x7F : c == htab }

    @inline(__always) static func lower(_ c: UInt8) -> UInt8 { (c >= 65 && c <= 90) ? c | 0x20 : c }

    /// Case-insensitive comparison of `count` bytes at `p` with a lower-case ASCII constant.
    @inline(__always)
    static func equalsLower(_ p: UnsafeRawBufferPointer, _ start: Int, _ count: Int, _ lowered: StaticString) -> Bool {
        guard count == lowered.utf8CodeUnitCount else { return false }
        let q = lowered.utf8Start
        for i in 0..<count where lower(p[start + i]) != q[i] { return false }
        return true
    }

    /// `a[aStart..<aStart+count]` and `b[bStart..<bStart+count]` equal, ignoring ASCII case
    /// (field names, RFC 9110 5.1).
    @inline(__always)
    static func equalsIgnoringCase(_ a: UnsafeRawBufferPointer, _ aStart: Int, _ b: UnsafeRawBufferPointer, _ bStart: Int, _ count: Int) -> Bool {
        for i in 0..<count where lower(a[aStart + i]) != lower(b[bStart + i]) { return false }
        return true
    }

    /// Exact (case-sensitive) comparison, as for methods (RFC 9110 9.1).
    @inline(__always)
    static func equals(_ p: UnsafeRawBufferPointer, _ start: Int, _ count: Int, _ text: StaticString) -> Bool {
        guard count == text.utf8CodeUnitCount else { return false }
        return memcmp(p.baseAddress! + start, text.utf8Start, count) == 0
    }

    @inline(__always)
    static func hasPrefixLower(_ p: UnsafeRawBufferPointer, _ start: Int, _ count: Int, _ lowered: StaticString) -> Bool {
        let n = lowered.utf8CodeUnitCount
        guard count >= n else { return false }
        let q = lowered.utf8Start
        for i in 0..<n where lower(p[start + i]) != q[i] { return false }
        return true
    }

    /// Parses a non-negative decimal of at most 18 digits (so it cannot overflow).
    @inline(__always)
    static func parseDecimal(_ p: UnsafeRawBufferPointer, _ start: Int, _ end: Int) -> Int? {
        let count = end - start
        guard count > 0, count <= 18 else { return nil }
        var value = 0
        for i in start..<end {
            let d = p[i] &- 48
            guard d < 10 else { return nil }
            value = value * 10 + Int(d)
        }
        return value
    }
}

/// A byte range inside a parsed head; Int32 keeps the field table small.
struct ByteRange: Equatable {
    var start: Int32
    var end: Int32

    @inline(__always) init(_ start: Int, _ end: Int) {
        self.start = Int32(truncatingIfNeeded: start)
        self.end = Int32(truncatingIfNeeded: end)
    }

    static let empty = ByteRange(0, 0)
    @inline(__always) var lower: Int { Int(start) }
    @inline(__always) var upper: Int { Int(end) }
    @inline(__always) var count: Int { Int(end - start) }
    var isEmpty: Bool { start == end }
}
