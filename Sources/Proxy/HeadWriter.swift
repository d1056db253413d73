// Hot path: per request, no allocation.
import NIOCore

/// Writes a message head into a `ByteBuffer`'s spare room through one pointer.
///
/// Hand-written because each `ByteBuffer.write*` call does a uniqueness check, a dynamic
/// exclusivity check and a capacity check: callgrind counted 31 such writes per proxied
/// request costing about 7,500 instructions, 18% of the gateway's user-space total. Here a
/// piece is a bounds test and a `memcpy`.
///
/// Writing past the room given sets `overflowed` and writes nothing more; `ByteBuffer.writeHead`
/// then runs the writer again with twice the room, so a short estimate costs time, never safety.
struct HeadWriter {
    private let base: UnsafeMutableRawPointer
    private let capacity: Int
    private(set) var count = 0
    private(set) var overflowed = false

    init(_ room: UnsafeMutableRawBufferPointer) {
        base = room.baseAddress!
        capacity = room.count
    }

    @inline(__always) private mutating func room(_ n: Int) -> Bool {
        if count + n <= capacity, !overflowed { return true }
        overflowed = true
        return false
    }

    @inline(__always) mutating func put(_ bytes: UnsafeRawBufferPointer) {
        let n = bytes.count
        guard n > 0, room(n) else { return }
        let from = bytes.baseAddress!, to = base + count
        // Most pieces are a few bytes: two overlapping word copies instead of a `memcpy` call
        // (callgrind: the calls cost more than the copying in a head or a span).
        if n >= 8, n <= 16 {
            to.storeBytes(of: from.loadUnaligned(as: UInt64.self), as: UInt64.self)
            (to + n - 8).storeBytes(of: (from + n - 8).loadUnaligned(as: UInt64.self), as: UInt64.self)
        } else if n >= 4, n < 8 {
            to.storeBytes(of: from.loadUnaligned(as: UInt32.self), as: UInt32.self)
            (to + n - 4).storeBytes(of: (from + n - 4).loadUnaligned(as: UInt32.self), as: UInt32.self)
        } else if n < 4 {
            for i in 0..<n { to.storeBytes(of: from.load(fromByteOffset: i, as: UInt8.self), toByteOffset: i, as: UInt8.self) }
        } else {
            to.copyMemory(from: from, byteCount: n)
        }
        count += n
    }

    /// `count` bytes of `p` from `start`.
    @inline(__always) mutating func put(_ p: UnsafeRawBufferPointer, _ start: Int, _ count: Int) {
        put(UnsafeRawBufferPointer(start: p.baseAddress! + start, count: count))
    }

    @inline(__always) mutating func put(_ p: UnsafeRawBufferPointer, _ r: ByteRange) {
        put(UnsafeRawBufferPointer(start: p.baseAddress! + r.lower, count: r.count))
    }

    @inline(__always) mutating func put(_ s: StaticString) {
        put(UnsafeRawBufferPointer(start: s.utf8Start, count: s.utf8CodeUnitCount))
    }

    @inline(__always) mutating func put(_ bytes: [UInt8]) {
        bytes.withUnsafeBytes { put($0) }
    }

    @inline(__always) mutating func put(_ buffer: ByteBuffer) {
        buffer.withUnsafeReadableBytes { put($0) }
    }

    mutating func put(string: String) {
        var s = string
        s.withUTF8 { put(UnsafeRawBufferPointer($0)) }
    }

    @inline(__always) mutating func put(byte: UInt8) {
        guard room(1) else { return }
        base.storeBytes(of: byte, toByteOffset: count, as: UInt8.self)
        count += 1
    }

    /// A non-negative integer in decimal.
    mutating func decimal(_ value: Int) {
        var v = UInt(max(0, value))
        var digits = 1
        var t = v
        while t >= 10 {
            t /= 10
            digits += 1
        }
        guard room(digits) else { return }
        // Two digits a step from a 200-byte table, as `hex` does.
        let pairs = UnsafeRawPointer(Self.decimalPairs.utf8Start)
        var end = count + digits
        while v >= 100 {
            end -= 2
            base.storeBytes(of: pairs.loadUnaligned(fromByteOffset: Int(v % 100) &* 2, as: UInt16.self), toByteOffset: end, as: UInt16.self)
            v /= 100
        }
        if v >= 10 {
            base.storeBytes(of: pairs.loadUnaligned(fromByteOffset: Int(v) &* 2, as: UInt16.self), toByteOffset: count, as: UInt16.self)
        } else {
            base.storeBytes(of: UInt8(48 + v), toByteOffset: count, as: UInt8.self)
        }
        count += digits
    }

    private static let decimalPairs: StaticString = "00010203040506070809101112131415161718192021222324252627282930313233343536373839404142434445464748495051525354555657585960616263646566676869707172737475767778798081828384858687888990919293949596979899"
    private static let hexPairs: StaticString = "000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f202122232425262728292a2b2c2d2e2f303132333435363738393a3b3c3d3e3f404142434445464748494a4b4c4d4e4f505152535455565758595a5b5c5d5e5f606162636465666768696a6b6c6d6e6f707172737475767778797a7b7c7d7e7f808182838485868788898a8b8c8d8e8f909192939495969798999a9b9c9d9e9fa0a1a2a3a4a5a6a7a8a9aaabacadaeafb0b1b2b3b4b5b6b7b8b9babbbcbdbebfc0c1c2c3c4c5c6c7c8c9cacbcccdcecfd0d1d2d3d4d5d6d7d8d9dadbdcdddedfe0e1e2e3e4e5e6e7e8e9eaebecedeeeff0f1f2f3f4f5f6f7f8f9fafbfcfdfeff"

    /// The low `digits` nibbles of `value` in lower-case hex.
    mutating func hex(_ value: UInt64, digits: Int) {
        guard room(digits) else { return }
        var v = value
        var end = count + digits
        // Two digits a step from a 512-byte table (a byte's two hex digits at 2 * byte).
        let pairs = UnsafeRawPointer(Self.hexPairs.utf8Start)
        while end - count >= 2 {
            end -= 2
            let pair = pairs.loadUnaligned(fromByteOffset: Int(v & 0xFF) &* 2, as: UInt16.self)
            base.storeBytes(of: pair, toByteOffset: end, as: UInt16.self)
            v >>= 8
        }
        if end > count { base.storeBytes(of: pairs.load(fromByteOffset: Int(v & 0xF) &* 2 &+ 1, as: UInt8.self), toByteOffset: count, as: UInt8.self) }
        count += digits
    }
}

extension ByteBuffer {
    /// Runs `write` on at least `estimate` bytes of spare room and keeps what it wrote; if the
    /// estimate was short, runs it again on twice the room (`write` must be repeatable).
    @inline(__always)
    mutating func writeHead(estimate: Int, _ write: (inout HeadWriter) -> Void) {
        var room = Swift.max(estimate, 64)
        while true {
            var done = false
            writeWithUnsafeMutableBytes(minimumWritableBytes: room) { p in
                var w = HeadWriter(p)
                write(&w)
                if w.overflowed { return 0 }
                done = true
                return w.count
            }
            if done { return }
            room *= 2
        }
    }
}

/// JSON pieces for access-log lines.
extension HeadWriter {
    /// `,"name":"value"` with `value`'s bytes escaped.
    mutating func jsonString(_ name: StaticString, _ value: UnsafeRawBufferPointer) {
        jsonName(name)
        jsonQuoted(value)
    }

    mutating func jsonString(_ name: StaticString, _ value: [UInt8]) {
        value.withUnsafeBytes { jsonString(name, $0) }
    }

    /// `,"name":123`.
    mutating func jsonInteger(_ name: StaticString, _ value: Int) {
        jsonName(name)
        if value < 0 { put(byte: UInt8(ascii: "-")) }
        decimal(value.magnitude > UInt(Int.max) ? Int.max : Int(value.magnitude))
    }

    /// `,"name":1.000250`: seconds with microseconds.
    mutating func jsonSeconds(_ name: StaticString, nanoseconds: Int64) {
        jsonName(name)
        let us = max(0, Int(nanoseconds / 1000))
        decimal(us / 1_000_000)
        put(byte: UInt8(ascii: "."))
        let frac = us % 1_000_000
        var scale = 100_000
        while scale > 1, frac < scale {
            put(byte: UInt8(ascii: "0"))
            scale /= 10
        }
        decimal(frac)
    }

    /// `,"name":`.
    mutating func jsonName(_ name: StaticString) {
        put(",\"")
        put(name)
        put("\":")
    }

    /// `"value"`, escaped: runs of plain bytes go in one copy; `"`, `\` and control bytes as escapes.
    mutating func jsonQuoted(_ p: UnsafeRawBufferPointer) {
        put(byte: UInt8(ascii: "\""))
        var start = 0
        var i = 0
        let n = p.count
        while i < n {
            // Eight plain bytes at a time (most of a path or an id); a byte loop where one is not.
            if i + 8 <= n, !HTTPBytes.needsJSONEscape(p.baseAddress!.loadUnaligned(fromByteOffset: i, as: UInt64.self)) {
                i += 8
                continue
            }
            let c = p[i]
            i += 1
            guard c == 34 || c == 92 || c < 0x20 || c == 0x7F else { continue }
            let at = i - 1
            if at > start { put(p, start, at - start) }
            start = at + 1
            switch c {
            case 34: put("\\\"")
            case 92: put("\\\\")
            default:
                put("\\u00")
                hex(UInt64(c), digits: 2)
            }
        }
        if start < p.count { put(p, start, p.count - start) }
        put(byte: UInt8(ascii: "\""))
    }
}
