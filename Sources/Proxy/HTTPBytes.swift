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

    /// `tchar` as a 256-entry table (non-zero: a token byte; written once, then only read) for
    /// the header-name loop, which reads it into a local once per head: a load and a test per
    /// byte against the masks' ten instructions (callgrind: header names were a third of the
    /// parser's work).
    nonisolated(unsafe) static let tokenTable: UnsafePointer<UInt8> = {
        let table = UnsafeMutablePointer<UInt8>.allocate(capacity: 256)
        for c in 0..<256 { table[c] = isTokenChar(UInt8(c)) ? 1 : 0 }
        return UnsafePointer(table)
    }()

    /// RFC 9110 5.6.2 `tchar` as two 64-bit masks: constants, so a check is a shift and a test
    /// (a global table read per byte costs a lazy-initialisation check; hot loops that can
    /// hoist one use `tokenTable`).
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

    // SWAR (eight bytes per step) scans for the two byte loops that see every byte of every
    // head. Callgrind put the byte-at-a-time loops at 11-12 instructions a byte, about a tenth
    // of the gateway's own instructions per proxied request.
    private static let ones: UInt64 = 0x0101_0101_0101_0101
    private static let highs: UInt64 = 0x8080_8080_8080_8080

    /// Whether some byte of `w` is zero. Exact as a yes/no; which byte is left to a byte loop.
    @inline(__always) private static func hasZero(_ w: UInt64) -> Bool { (w &- ones) & ~w & highs != 0 }

    /// Whether some byte of `w` is below 0x20 or is 0x7F (bytes from 0x80 up are not flagged).
    @inline(__always) private static func hasControl(_ w: UInt64) -> Bool {
        ((w &- ones &* 0x20) & ~w & highs) != 0 || hasZero(w ^ (ones &* 0x7F))
    }

    /// Whether some byte of `w` is a quote, a backslash or a control byte.
    @inline(__always) static func needsJSONEscape(_ w: UInt64) -> Bool {
        hasControl(w) || hasZero(w ^ (ones &* 0x22)) || hasZero(w ^ (ones &* 0x5C))
    }

    /// The index of the first byte from `from` (below `end`) that is not allowed in a field
    /// value, or `end`: a field's CR, or a control byte to refuse.
    @inline(__always)
    static func valueEnd(_ p: UnsafeRawBufferPointer, from: Int, end: Int) -> Int {
        var i = from
        let base = p.baseAddress!
        while i + 8 <= end {
            let w = UInt64(littleEndian: base.loadUnaligned(fromByteOffset: i, as: UInt64.self))
            if hasControl(w) {
                // A tab is allowed: find the first byte that is not, in these eight.
                for k in i..<i + 8 where !isFieldValueChar(p[k]) { return k }
            }
            i += 8
        }
        while i < end, isFieldValueChar(p[i]) { i += 1 }
        return i
    }

    /// The index of the first LF from `from` (below `end`), or `end`.
    @inline(__always)
    static func firstLF(_ p: UnsafeRawBufferPointer, from: Int, end: Int) -> Int {
        var i = from
        let base = p.baseAddress!
        while i + 8 <= end {
            let w = UInt64(littleEndian: base.loadUnaligned(fromByteOffset: i, as: UInt64.self))
            if hasZero(w ^ (ones &* 0x0A)) { break }
            i += 8
        }
        while i < end, p[i] != lf { i += 1 }
        return i
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
