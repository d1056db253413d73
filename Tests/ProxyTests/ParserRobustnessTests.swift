import NIOCore
import Testing

@testable import Proxy

/// Mutated and truncated input through the head parser and the chunked decoder. The parsers
/// index raw pointers, which only debug builds bounds-check: this runs there, so an
/// out-of-bounds read fails the test instead of reading memory in production.
@Suite struct ParserRobustnessTests {
    static let seeds: [String] = [
        "GET /a?b=c HTTP/1.1\r\nHost: example.com\r\nConnection: keep-alive, X-A\r\nX-A: 1\r\n\r\n",
        "POST /p HTTP/1.1\r\nHost: h\r\nContent-Length: 5\r\n\r\nhello",
        "PUT /x HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n",
        "HTTP/1.1 200 OK\r\nContent-Length: 3\r\nX-Y: z\r\n\r\n",
    ]
    static let chunkSeed = "4\r\nWiki\r\n5;a=b\r\npedia\r\n0\r\nT: v\r\n\r\n"

    struct Random {
        var state: UInt64
        mutating func next(_ bound: Int) -> Int {
            state = state &* 6_364_136_223_846_793_005 &+ 1_442_695_040_888_963_407
            return Int((state >> 33) % UInt64(bound))
        }
    }

    static func mutate(_ bytes: [UInt8], _ rng: inout Random) -> [UInt8] {
        var out = bytes
        let interesting: [UInt8] = [0, 9, 10, 13, 32, 58, 59, 0x7F, 0xFF, UInt8(ascii: "0"), UInt8(ascii: "f")]
        for _ in 0..<(1 + rng.next(4)) {
            switch rng.next(4) {
            case 0 where !out.isEmpty: out[rng.next(out.count)] = interesting[rng.next(interesting.count)]
            case 1 where !out.isEmpty: out.remove(at: rng.next(out.count))
            case 2: out.insert(interesting[rng.next(interesting.count)], at: rng.next(out.count + 1))
            default: if !out.isEmpty { out = Array(out[..<rng.next(out.count)]) }
            }
        }
        return out
    }

    @Test func headParsersSurviveMutatedInput() {
        var rng = Random(state: 0x5EED)
        let limits = HeadLimits(maxHeaderBytes: 16384, maxHeaderCount: 100, maxURIBytes: 8192)
        var request = RequestHead()
        var response = ResponseHead()
        for i in 0..<20_000 {
            let input = Self.mutate(Array(Self.seeds[i % Self.seeds.count].utf8), &rng)
            input.withUnsafeBytes { p in
                guard let end = HeadParser.findEnd(p, from: 0) else {
                    _ = HeadParser.requestLineEnd(p)
                    return
                }
                let head = UnsafeRawBufferPointer(rebasing: p[..<end])
                if (try? HeadParser.parseRequest(head, into: &request, limits: limits)) != nil {
                    // Every range the parser hands out must lie inside the head.
                    for field in request.headers.fields {
                        #expect(field.line.lower >= 0 && field.line.upper <= head.count)
                        #expect(field.value.lower >= field.name.upper && field.value.upper <= field.line.upper)
                    }
                    #expect(request.target.upper <= head.count)
                    _ = PathSafety.hasDotSegment(head, request.path)
                }
                _ = try? HeadParser.parseResponse(head, into: &response, limits: limits)
            }
        }
    }

    @Test func chunkedDecoderSurvivesMutatedInput() {
        var rng = Random(state: 0xC0FFEE)
        for _ in 0..<20_000 {
            let input = Self.mutate(Array(Self.chunkSeed.utf8), &rng)
            var decoder = ChunkedDecoder()
            var buffer = ByteBuffer(bytes: input)
            var total = 0
            while let event = try? decoder.next(&buffer) {
                if case .data(let slice) = event { total += slice.readableBytes }
                if case .end = event { break }
            }
            #expect(total <= input.count)
        }
    }
}
