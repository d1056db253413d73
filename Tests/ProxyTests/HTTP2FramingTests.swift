import NIOCore
import NIOHPACK
import Testing

@testable import Proxy

/// The server side's own HTTP/2 layer, piece by piece: answers' header blocks decoded by
/// NIOHPACK's decoder (the differential check for our encoder), frames cut from bytes as they
/// arrive, and the flood meter on an injected clock. Whole connections are tested with real
/// clients in GatewayTests (HTTP2Tests).
@Suite struct HTTP2FramingTests {
    // MARK: HPACK

    static func decode(_ block: ByteBuffer) throws -> [(String, String)] {
        var decoder = HPACKDecoder(allocator: ByteBufferAllocator(), maxDynamicTableSize: 4096, maxHeaderListSize: 1 << 24)
        var block = block
        return try decoder.decodeHeaders(from: &block).map { ($0.name, $0.value) }
    }

    @Test func blocksWeWriteDecodeToTheSameFieldsWithNIOHPACK() throws {
        var random = SystemRandomNumberGenerator()
        let names = ["content-type", "Content-Length", "DATE", "x-request-id", "set-cookie", "X-Custom-Header", "vary", "www-authenticate", "a", String(repeating: "n", count: 200)]
        for _ in 0..<300 {
            let status = [200, 204, 206, 304, 400, 404, 500, 201, 301, 418, 503, 101].randomElement(using: &random)!
            var block = ByteBuffer()
            HPACKWriter.writeStatus(status, into: &block)
            var expected = [(":status", String(status))]
            for _ in 0..<Int.random(in: 0...12, using: &random) {
                let name = names.randomElement(using: &random)!
                let length = [0, 1, 126, 127, 128, 300, 20_000].randomElement(using: &random)!
                let value = String((0..<length).map { _ in "abc xyz;=/0123456789".randomElement(using: &random)! })
                var name8 = name
                var value8 = value
                name8.withUTF8 { n in
                    value8.withUTF8 { v in
                        HPACKWriter.writeField(name: UnsafeRawBufferPointer(n), value: UnsafeRawBufferPointer(v), into: &block)
                    }
                }
                expected.append((name.lowercased(), value))
            }
            let decoded = try Self.decode(block)
            #expect(decoded.map(\.0) == expected.map(\.0))
            #expect(decoded.map(\.1) == expected.map(\.1))
        }
    }

    @Test func staticNamesAreIndexedAndNothingEntersTheDynamicTable() throws {
        var block = ByteBuffer()
        HPACKWriter.writeStatus(200, into: &block)
        HPACKWriter.writeField(name: "content-type", value: "text/plain", into: &block)
        // :status 200 is static entry 8 (one byte); content-type is name index 31 (a 4-bit
        // prefix integer 15 + 16), literal without indexing.
        #expect(Array(block.readableBytesView.prefix(3)) == [0x88, 0x0F, 0x10])
        var decoder = HPACKDecoder(allocator: ByteBufferAllocator())
        var copy = block
        _ = try decoder.decodeHeaders(from: &copy)
        // The first dynamic entry (index 62) does not exist afterwards.
        var firstDynamic = ByteBuffer(bytes: [0xBE])
        #expect(throws: (any Error).self) { try decoder.decodeHeaders(from: &firstDynamic) }
    }

    @Test func anAnswerHeadLosesItsConnectionFieldsAndTellsGRPC() throws {
        let raw = "HTTP/1.1 200 OK\r\nContent-Type: application/grpc+proto\r\nConnection: keep-alive\r\nKeep-Alive: timeout=5\r\nTransfer-Encoding: chunked\r\nX-Trace: 1\r\n\r\n"
        var parsed = ResponseHead()
        var block = ByteBuffer()
        let (body, grpc) = try Array(raw.utf8).withUnsafeBytes { p in
            try HeadParser.parseResponse(p, into: &parsed, limits: H2Connection.responseHeadLimits)
            return H2ResponseHead.write(p, parsed, isHEAD: false, into: &block)
        }
        #expect(grpc)
        guard case .chunked = body else { Issue.record("\(body)"); return }
        let fields = try Self.decode(block)
        #expect(fields.map(\.0) == [":status", "content-type", "x-trace"])
    }

    // MARK: request heads

    static func head(_ fields: [(String, String)], endStream: Bool = true) -> (String, Bool, Int?)? {
        var out = ByteBuffer()
        guard let (isHEAD, length) = H2RequestHead.write(HPACKHeaders(fields), endStream: endStream, into: &out) else { return nil }
        return (String(buffer: out), isHEAD, length)
    }

    static let base = [(":method", "GET"), (":scheme", "https"), (":authority", "a.example"), (":path", "/x?y")]

    @Test func aRequestsBlockBecomesAnHTTP1Head() throws {
        let get = try #require(Self.head(Self.base + [("cookie", "a=1"), ("accept", "*/*"), ("cookie", "b=2"), ("host", "other"), ("te", "trailers")]))
        #expect(get.0 == "GET /x?y HTTP/1.1\r\nhost: a.example\r\naccept: */*\r\ncookie: a=1; b=2\r\n\r\n")
        #expect(!get.1 && get.2 == nil)
        let sized = try #require(Self.head([(":method", "POST")] + Self.base.dropFirst() + [("content-length", "5")], endStream: false))
        #expect(sized.0.hasSuffix("content-length: 5\r\n\r\n") && sized.2 == 5)
        let streamed = try #require(Self.head([(":method", "POST")] + Self.base.dropFirst(), endStream: false))
        #expect(streamed.0.hasSuffix("transfer-encoding: chunked\r\n\r\n") && streamed.2 == nil)
        #expect(Self.head([(":method", "HEAD")] + Self.base.dropFirst())?.1 == true)
    }

    @Test func malformedBlocksAreRefused() {
        let refused: [[(String, String)]] = [
            Self.base + [(":path", "/again")],  // a pseudo-field twice
            Self.base + [("accept", "*/*"), (":method", "GET")],  // a pseudo-field after a regular one
            Self.base + [("Accept", "*/*")],  // upper case
            Self.base + [("accept", " x")],  // white space first
            Self.base + [("accept", "x\r\nevil: 1")],
            Self.base + [("connection", "close")],
            Self.base + [("te", "gzip")],
            Self.base + [("content-length", "5a")],
            Self.base + [("content-length", "")],
            Self.base + [("content-length", "1"), ("content-length", "1")],
            Self.base + [(":protocol", "websocket")],
            [(":method", "CONNECT"), (":scheme", "https"), (":authority", "a"), (":path", "/")],
            [(":method", "GET"), (":authority", "a"), (":path", "/")],  // no :scheme
            [(":method", "GET"), (":scheme", "https"), (":path", "x")],  // not origin-form
            [(":method", "G T"), (":scheme", "https"), (":path", "/")],
            [(":method", "GET"), (":scheme", "https"), (":path", "/a b")],
        ]
        for fields in refused {
            #expect(Self.head(fields) == nil, "\(fields)")
        }
    }

    // MARK: HTTP/1.1 messages cut for streams

    static func cut(_ cutter: inout H1MessageCutter, _ text: String, framing: H1MessageCutter.Body) throws -> [String] {
        var bytes = ByteBuffer(string: text)
        var seen: [String] = []
        while let event = try cutter.next(&bytes) {
            switch event {
            case .head(let head):
                seen.append("head \(head.readableBytes)")
                if String(buffer: head).hasPrefix("HTTP/1.1 100") { cutter.expectHead() } else { cutter.framed(framing) }
            case .data(let data, let end): seen.append("data \(String(buffer: data))\(end ? " end" : "")")
            case .end(let trailers): seen.append("end \(trailers.map { String(buffer: $0) } ?? "-")")
            }
        }
        if bytes.readableBytes > 0 { seen.append("left \(bytes.readableBytes)") }
        return seen
    }

    @Test func messagesAreCutIntoHeadBodyAndEnd() throws {
        var c = H1MessageCutter(maxHead: 100, expectingHead: true)
        // A head in two writes, an interim head first, a length body and bytes past it.
        #expect(try Self.cut(&c, "HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\n", framing: .length(3)) == ["head 25"])
        #expect(try Self.cut(&c, "a: b\r\n\r\nabcXY", framing: .length(3)) == ["head 25", "data abc end", "left 2"])
        #expect(c.isDone)
        c.expectHead()
        #expect(try Self.cut(&c, "H\r\n\r\n3\r\nabc\r\n0\r\nx-t: 1\r\n\r\n", framing: .chunked) == ["head 5", "data abc", "end x-t: 1\r\n"])
        c.expectHead()
        #expect(try Self.cut(&c, "H\r\n\r\nall of it", framing: .untilClose) == ["head 5", "data all of it"])
        #expect(c.isUntilClose)
        c.expectHead()
        #expect(throws: H1MessageCutter.Failure.self) { try Self.cut(&c, String(repeating: "x", count: 101), framing: .none) }
    }

    // MARK: frames

    static func frame(_ type: UInt8, _ flags: UInt8, _ stream: UInt32, _ payload: [UInt8]) -> [UInt8] {
        var out = ByteBuffer()
        H2Wire.writeHeader(&out, length: payload.count, type: type, flags: flags, stream: stream)
        out.writeBytes(payload)
        return Array(out.readableBytesView)
    }

    static let settings = frame(H2Wire.settings, 0, 0, [0, 4, 0, 0, 0xFF, 0xFF])

    /// Feeds `bytes` one byte a read, as a slow client would, and collects the frames.
    static func frames(_ bytes: [UInt8], _ decoder: inout H2FrameDecoder) throws(H2FrameDecoder.Failure) -> [H2FrameDecoder.Frame] {
        var frames: [H2FrameDecoder.Frame] = []
        var pending = ByteBuffer()
        for byte in bytes {
            pending.writeInteger(byte)
            while let frame = try decoder.next(&pending) { frames.append(frame) }
        }
        return frames
    }

    static func failure(_ bytes: [UInt8]) -> H2FrameDecoder.Failure? {
        var decoder = H2FrameDecoder(maxBlockBytes: 1000)
        var buffer = ByteBuffer(bytes: H2FrameDecoder.preface + settings + bytes)
        do {
            while try decoder.next(&buffer) != nil {}
            return nil
        } catch {
            return error
        }
    }

    @Test func framesArriveWholeWhateverTheReadsCutThem() throws {
        var decoder = H2FrameDecoder(maxBlockBytes: 1000)
        let padded = Self.frame(H2Wire.data, H2Wire.padded | H2Wire.endStream, 1, [3] + Array("hello".utf8) + [0, 0, 0])
        let frames = try Self.frames(H2FrameDecoder.preface + Self.settings + padded, &decoder)
        #expect(frames.count == 2)
        guard case .settings(let entries) = frames[0], case .data(1, let payload, 9, true) = frames[1] else {
            Issue.record("\(frames)")
            return
        }
        #expect(entries.readableBytes == 6)
        #expect(String(buffer: payload) == "hello")
    }

    @Test func aHeaderBlockIsPutBackTogetherFromItsContinuations() throws {
        var decoder = H2FrameDecoder(maxBlockBytes: 1000)
        let bytes = H2FrameDecoder.preface + Self.settings
            + Self.frame(H2Wire.headers, H2Wire.endStream | H2Wire.priorityFlag, 3, [0, 0, 0, 1, 16, 0xAA])
            + Self.frame(H2Wire.continuation, 0, 3, [0xBB])
            + Self.frame(H2Wire.continuation, H2Wire.endHeaders, 3, [0xCC])
        let frames = try Self.frames(bytes, &decoder)
        guard frames.count == 2, case .headers(3, let block, true, 1) = frames[1] else {
            Issue.record("\(frames)")
            return
        }
        #expect(Array(block.readableBytesView) == [0xAA, 0xBB, 0xCC])
    }

    @Test func brokenFramesEndTheConnectionOrTheStreamWithTheRFCsCodes() {
        let open = Self.frame(H2Wire.headers, 0, 1, [0x82])
        let cases: [([UInt8], H2FrameDecoder.Failure)] = [
            (Self.frame(H2Wire.data, 0, 1, Array(repeating: 0, count: 16385)), .connection(.frameSizeError)),
            (Self.frame(H2Wire.data, 0, 0, [1]), .connection(.protocolError)),
            (Self.frame(H2Wire.data, H2Wire.padded, 1, [5, 1, 2]), .connection(.protocolError)),
            (Self.frame(H2Wire.headers, H2Wire.endHeaders, 0, [0x82]), .connection(.protocolError)),
            (Self.frame(H2Wire.priority, 0, 1, [0, 0, 0, 0]), .stream(1, .frameSizeError)),
            (Self.frame(H2Wire.rstStream, 0, 1, [0, 0, 0]), .connection(.frameSizeError)),
            (Self.frame(H2Wire.settings, H2Wire.ack, 0, [0]), .connection(.frameSizeError)),
            (Self.frame(H2Wire.settings, 0, 0, [0, 1, 0]), .connection(.frameSizeError)),
            (Self.frame(H2Wire.settings, 0, 1, []), .connection(.protocolError)),
            (Self.frame(H2Wire.ping, 0, 0, [1, 2, 3]), .connection(.frameSizeError)),
            (Self.frame(H2Wire.pushPromise, H2Wire.endHeaders, 1, [0, 0, 0, 2]), .connection(.protocolError)),
            (Self.frame(H2Wire.windowUpdate, 0, 0, [0, 0, 0, 0]), .connection(.protocolError)),
            (Self.frame(H2Wire.windowUpdate, 0, 5, [0, 0, 0, 0]), .stream(5, .protocolError)),
            (Self.frame(H2Wire.continuation, H2Wire.endHeaders, 1, [0x82]), .connection(.protocolError)),
            // Something between a block's frames, or a continuation of another stream.
            (open + Self.frame(H2Wire.ping, 0, 0, Array(repeating: 0, count: 8)), .connection(.protocolError)),
            (open + Self.frame(H2Wire.continuation, H2Wire.endHeaders, 3, [0x82]), .connection(.protocolError)),
            // CVE-2024-27316: a block past its bound, in bytes or in frames.
            (open + Self.frame(H2Wire.continuation, 0, 1, Array(repeating: 0x82, count: 1000)), .connection(.enhanceYourCalm)),
            (open + (0..<200).flatMap { _ in Self.frame(H2Wire.continuation, 0, 1, []) }, .connection(.enhanceYourCalm)),
        ]
        for (bytes, expected) in cases {
            #expect(Self.failure(bytes) == expected, "\(bytes.prefix(12))")
        }
        // The preface is checked as it comes, and SETTINGS must follow it.
        var decoder = H2FrameDecoder(maxBlockBytes: 1000)
        var wrong = ByteBuffer(string: "PRI * HTTP/1.1")
        #expect(throws: H2FrameDecoder.Failure.connection(.protocolError)) { try decoder.next(&wrong) }
        decoder = H2FrameDecoder(maxBlockBytes: 1000)
        var noSettings = ByteBuffer(bytes: H2FrameDecoder.preface + Self.frame(H2Wire.ping, 0, 0, Array(repeating: 0, count: 8)))
        #expect(throws: H2FrameDecoder.Failure.connection(.protocolError)) { try decoder.next(&noSettings) }
    }

    @Test func unknownFramesArePassedOverAndPingAcksIgnored() throws {
        var decoder = H2FrameDecoder(maxBlockBytes: 1000)
        let frames = try Self.frames(
            H2FrameDecoder.preface + Self.settings + Self.frame(0x42, 0xFF, 7, [1, 2, 3])
                + Self.frame(H2Wire.ping, H2Wire.ack, 0, Array(repeating: 0, count: 8)), &decoder)
        #expect(frames.count == 3)
        guard case .ignored = frames[1], case .ignored = frames[2] else {
            Issue.record("\(frames)")
            return
        }
    }

    // MARK: floods

    @Test func theFloodMeterCountsWithinItsWindow() {
        let start = NIODeadline.uptimeNanoseconds(1_000_000_000)
        var meter = H2FloodMeter(now: start)
        func count(_ kind: H2FloodMeter.Kind, _ now: NIODeadline) -> Bool { meter.count(kind, now: now) }
        for _ in 0..<H2FloodMeter.maxResets { #expect(!count(.reset, start)) }
        #expect(count(.reset, start))
        // A client that cancels half of what it opens (deadlines) is not flooding.
        var steady = H2FloodMeter(now: start)
        for i in 0..<2000 {
            _ = steady.count(.opened, now: start)
            if i % 2 == 0 {
                let over = steady.count(.reset, now: start)
                #expect(!over)
            }
        }
        // A new window starts the counts again: a steady client never reaches the limit.
        let later = start + H2FloodMeter.window
        #expect(!count(.reset, later))
        for _ in 0..<H2FloodMeter.maxControl - 1 { #expect(!count(.control, later)) }
        #expect(!count(.empty, later))
        #expect(!count(.control, later))
        #expect(count(.control, later))
    }
}
