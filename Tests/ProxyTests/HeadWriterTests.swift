import Foundation
import NIOCore
import Testing

@testable import Proxy

/// The head writer and the eight-bytes-a-step scans against plain byte-at-a-time answers.
@Suite struct HeadWriterTests {
    @Test func writesPiecesNumbersAndHex() {
        var out = ByteBuffer()
        out.writeHead(estimate: 64) { w in
            w.put("GET ")
            w.put(Array("/a".utf8))
            w.put(byte: UInt8(ascii: " "))
            w.decimal(0)
            w.put(byte: UInt8(ascii: ","))
            w.decimal(1_234_567_890_123)
            w.put(byte: UInt8(ascii: ","))
            w.hex(0x0123_4567_89ab_cdef, digits: 16)
            w.put(byte: UInt8(ascii: ","))
            w.hex(0xa, digits: 2)
            w.put(byte: UInt8(ascii: ","))
            w.hex(0xabc, digits: 3)
        }
        #expect(String(buffer: out) == "GET /a 0,1234567890123,0123456789abcdef,0a,abc")
    }

    @Test func decimalsAndPiecesOfEverySize() {
        for value in [0, 7, 9, 10, 99, 100, 101, 999, 1000, 65_535, 1_700_000_000_123_456_789, Int.max] {
            var out = ByteBuffer()
            out.writeHead(estimate: 8) { w in w.decimal(value) }
            #expect(String(buffer: out) == String(value))
        }
        let source = Array((0..<40).map { UInt8(65 + $0) })
        for n in 0...40 {
            var out = ByteBuffer()
            out.writeHead(estimate: 8) { w in
                w.put(byte: UInt8(ascii: "["))
                source.withUnsafeBytes { w.put(UnsafeRawBufferPointer(rebasing: $0[0..<n])) }
                w.put(byte: UInt8(ascii: "]"))
            }
            #expect(Array(out.readableBytesView) == [UInt8(ascii: "[")] + source[0..<n] + [UInt8(ascii: "]")])
        }
    }

    @Test func aShortEstimateIsWrittenAgainWithMoreRoom() {
        let long = [UInt8](repeating: UInt8(ascii: "x"), count: 10_000)
        var out = ByteBuffer(string: "kept:")
        var runs = 0
        out.writeHead(estimate: 16) { w in
            runs += 1
            w.put(long)
            w.put("!")
        }
        #expect(runs > 1)
        #expect(out.readableBytes == 5 + 10_001)
        #expect(out.getString(at: 0, length: 6) == "kept:x")
        #expect(out.getString(at: out.readableBytes - 2, length: 2) == "x!")
    }

    @Test func valueScanStopsWhereTheByteLoopStops() {
        // Every disallowed byte class at every offset of a 24-byte value, tabs and obs-text around.
        let fill: [UInt8] = Array("ab\tc de\u{7E}".utf8) + [0x80, 0xFF]
        for bad: UInt8 in [0x00, 0x01, 0x0A, 0x0D, 0x1F, 0x7F] {
            for at in 0..<24 {
                var bytes = (0..<24).map { fill[$0 % fill.count] }
                bytes[at] = bad
                bytes.withUnsafeBytes { p in
                    #expect(HTTPBytes.valueEnd(p, from: 0, end: p.count) == at)
                    #expect(HTTPBytes.valueEnd(p, from: min(at, 3), end: p.count) == at)
                }
            }
        }
        let clean = (0..<40).map { fill[$0 % fill.count] }
        clean.withUnsafeBytes { p in #expect(HTTPBytes.valueEnd(p, from: 0, end: p.count) == 40) }
    }

    @Test func lineFeedScanFindsTheFirst() {
        for at in 0..<20 {
            var bytes = [UInt8](repeating: UInt8(ascii: "a"), count: 20)
            bytes[at] = 10
            if at + 3 < 20 { bytes[at + 3] = 10 }
            bytes.withUnsafeBytes { p in
                #expect(HTTPBytes.firstLF(p, from: 0, end: p.count) == at)
                #expect(HTTPBytes.firstLF(p, from: at + 1, end: p.count) == (at + 3 < 20 ? at + 3 : 20))
            }
        }
    }

    @Test func jsonStringsEscapeWhatJSONNeedsAtAnyOffset() throws {
        for special: UInt8 in [0x22, 0x5C, 0x00, 0x0A, 0x1F, 0x7F] {
            for at in 0..<20 {
                var bytes = Array("abcdefghijklmnopqrst".utf8)
                bytes[at] = special
                var out = ByteBuffer()
                out.writeHead(estimate: 16) { w in bytes.withUnsafeBytes { w.jsonQuoted($0) } }
                let decoded = try JSONSerialization.jsonObject(with: Data(out.readableBytesView), options: .fragmentsAllowed) as? String
                #expect(decoded.map { Array($0.utf8) } == bytes, "special \(special) at \(at): \(String(buffer: out))")
            }
        }
    }
}
