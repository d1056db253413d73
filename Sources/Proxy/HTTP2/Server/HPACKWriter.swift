// Hot path: every answer's header block is written here.
import NIOCore

/// Header blocks for answers (RFC 7541), written straight from the bytes of the handler's
/// response head: `:status` and field names from the static table where it has them, every
/// value a literal that is not indexed, no Huffman coding.
///
/// Why this and not NIOHPACK's encoder: that one takes Swift strings, Huffman-codes every
/// string and searches its dynamic table per field (measured: the Huffman coding alone was
/// 18% of an HTTP/2 request's instructions). An answer's values mostly differ each time
/// (ids, lengths, dates), so the dynamic table buys little, nginx does without it too, and
/// never touching it means the block needs no state: the peer's table size is irrelevant.
/// `HPACKWriterTests` decodes what this writes with NIOHPACK's decoder and compares.
enum HPACKWriter {
    /// `:status` for the codes the static table holds (RFC 7541 Appendix A), else a literal
    /// with the `:status` name (index 8).
    static func writeStatus(_ status: Int, into out: inout ByteBuffer) {
        let index: UInt8
        switch status {
        case 200: index = 8
        case 204: index = 9
        case 206: index = 10
        case 304: index = 11
        case 400: index = 12
        case 404: index = 13
        case 500: index = 14
        default:
            out.writeWithUnsafeMutableBytes(minimumWritableBytes: 5) { p in
                p[0] = 0x08  // literal without indexing, name index 8
                p[1] = 3
                p[2] = UInt8(48 + status / 100 % 10)
                p[3] = UInt8(48 + status / 10 % 10)
                p[4] = UInt8(48 + status % 10)
                return 5
            }
            return
        }
        out.writeInteger(0x80 | index)
    }

    /// A field as a literal without indexing; `name` is lower-cased on the way.
    static func writeField(name: UnsafeRawBufferPointer, value: UnsafeRawBufferPointer, into out: inout ByteBuffer) {
        let index = staticIndex(name)
        // One write for the field: its largest encoding is its bytes and three integers.
        let most = name.count + value.count + 16
        out.writeWithUnsafeMutableBytes(minimumWritableBytes: most) { p in
            var at = 0
            if let index {
                at = put(index, prefix: 4, first: 0x00, p, at)
            } else {
                p[0] = 0x00
                at = put(name.count, prefix: 7, first: 0x00, p, 1)
                for i in 0..<name.count {
                    let c = name[i]
                    p[at + i] = c >= 65 && c <= 90 ? c | 0x20 : c
                }
                at += name.count
            }
            at = put(value.count, prefix: 7, first: 0x00, p, at)
            if value.count > 0 { UnsafeMutableRawBufferPointer(rebasing: p[at..<(at + value.count)]).copyMemory(from: value) }
            return at + value.count
        }
    }

    /// RFC 7541 5.1: `value` as a `prefix`-bit integer after the bits `first` sets, at `at`;
    /// returns the index after it.
    @inline(__always)
    private static func put(_ value: Int, prefix: Int, first: UInt8, _ p: UnsafeMutableRawBufferPointer, _ at: Int) -> Int {
        let max = (1 << prefix) - 1
        if value < max {
            p[at] = first | UInt8(value)
            return at + 1
        }
        p[at] = first | UInt8(max)
        var i = at + 1
        var rest = value - max
        while rest >= 128 {
            p[i] = UInt8(rest & 0x7F | 0x80)
            rest >>= 7
            i += 1
        }
        p[i] = UInt8(rest)
        return i + 1
    }

    static func writeField(name: StaticString, value: String, into out: inout ByteBuffer) {
        name.withUTF8Buffer { n in
            var value = value
            value.withUTF8 { v in writeField(name: UnsafeRawBufferPointer(n), value: UnsafeRawBufferPointer(v), into: &out) }
        }
    }

    /// The static table's index for a field name (any case), or nil.
    @inline(__always)
    static func staticIndex(_ name: UnsafeRawBufferPointer) -> Int? {
        guard name.count < staticNames.count else { return nil }
        for (candidate, index) in staticNames[name.count] where equalsLowercased(name, candidate) { return index }
        return nil
    }

    @inline(__always)
    private static func equalsLowercased(_ name: UnsafeRawBufferPointer, _ candidate: [UInt8]) -> Bool {
        for i in 0..<candidate.count {
            let c = name[i]
            if (c >= 65 && c <= 90 ? c | 0x20 : c) != candidate[i] { return false }
        }
        return true
    }

    /// RFC 7541 Appendix A's regular names (first index of each), grouped by length.
    private static let staticNames: [[([UInt8], Int)]] = {
        let names: [(String, Int)] = [
            ("accept-charset", 15), ("accept-encoding", 16), ("accept-language", 17), ("accept-ranges", 18),
            ("accept", 19), ("access-control-allow-origin", 20), ("age", 21), ("allow", 22), ("authorization", 23),
            ("cache-control", 24), ("content-disposition", 25), ("content-encoding", 26), ("content-language", 27),
            ("content-length", 28), ("content-location", 29), ("content-range", 30), ("content-type", 31),
            ("cookie", 32), ("date", 33), ("etag", 34), ("expect", 35), ("expires", 36), ("from", 37), ("host", 38),
            ("if-match", 39), ("if-modified-since", 40), ("if-none-match", 41), ("if-range", 42),
            ("if-unmodified-since", 43), ("last-modified", 44), ("link", 45), ("location", 46), ("max-forwards", 47),
            ("proxy-authenticate", 48), ("proxy-authorization", 49), ("range", 50), ("referer", 51), ("refresh", 52),
            ("retry-after", 53), ("server", 54), ("set-cookie", 55), ("strict-transport-security", 56),
            ("transfer-encoding", 57), ("user-agent", 58), ("vary", 59), ("via", 60), ("www-authenticate", 61),
        ]
        var table = [[([UInt8], Int)]](repeating: [], count: 28)
        for (name, index) in names { table[name.utf8.count].append((Array(name.utf8), index)) }
        return table
    }()
}
