import NIOCore
import Testing

@testable import Proxy

@Suite struct HeadParserTests {
    let limits = HeadLimits(maxHeaderBytes: 16384, maxHeaderCount: 100, maxURIBytes: 8192)

    func parse(_ text: String) throws(HeadError) -> (RequestHead, [UInt8]) {
        let bytes = Array(text.utf8)
        let result: Result<RequestHead, HeadError> = bytes.withUnsafeBytes { p in
            var head = RequestHead()
            do throws(HeadError) {
                try HeadParser.parseRequest(p, into: &head, limits: limits)
                return .success(head)
            } catch {
                return .failure(error)
            }
        }
        return (try result.get(), bytes)
    }

    func string(_ bytes: [UInt8], _ r: ByteRange) -> String { String(decoding: bytes[r.lower..<r.upper], as: UTF8.self) }

    @Test func parsesRequestLineAndFields() throws {
        let (head, bytes) = try parse("POST /a/b?c=d HTTP/1.1\r\nHost: example.com\r\nContent-Length: 12\r\nX-A:  spaced  \r\n\r\n")
        #expect(string(bytes, head.method) == "POST")
        #expect(string(bytes, head.target) == "/a/b?c=d")
        #expect(string(bytes, head.path) == "/a/b")
        #expect(head.framing == .contentLength(12))
        #expect(head.keepAlive)
        #expect(string(bytes, head.headers.fields[2].value) == "spaced")
        #expect(head.headers.fields[0].kind == .host)
    }

    @Test func marksHopByHopAndConnectionNamedFields() throws {
        let (head, _) = try parse("GET / HTTP/1.1\r\nHost: a\r\nConnection: close, X-Hop\r\nX-Hop: 1\r\nKeep-Alive: 1\r\nProxy-Foo: 1\r\nX-Keep: 1\r\n\r\n")
        #expect(head.headers.fields.map(\.kind) == [.host, .connection, .connectionNamed, .hopByHop, .hopByHop, .other])
        #expect(!head.keepAlive)
    }

    @Test func classifiesIdempotentMethodsCaseSensitively() throws {
        for method in ["GET", "HEAD", "PUT", "DELETE", "OPTIONS", "TRACE"] {
            #expect(try parse("\(method) / HTTP/1.1\r\nHost: a\r\n\r\n").0.isIdempotent, "\(method)")
        }
        for method in ["POST", "PATCH", "get", "CONNECT", "GETX"] {
            #expect(try !parse("\(method) / HTTP/1.1\r\nHost: a\r\n\r\n").0.isIdempotent, "\(method)")
        }
    }

    @Test func http10KeepAliveOnlyWhenAsked() throws {
        #expect(try !parse("GET / HTTP/1.0\r\n\r\n").0.keepAlive)
        #expect(try parse("GET / HTTP/1.0\r\nConnection: keep-alive\r\n\r\n").0.keepAlive)
    }

    @Test func findsTheEndOfAHeadSplitAnywhere() {
        let text = Array("GET / HTTP/1.1\r\nHost: a\r\n\r\nNEXT".utf8)
        let expected = text.count - 4
        for split in 1..<text.count {
            // Scanning resumes three bytes back, as the handler does.
            let first = Array(text[..<split])
            let found = first.withUnsafeBytes { HeadParser.findEnd($0, from: 0) }
            if let found {
                #expect(found == expected)
                continue
            }
            let resumed = text.withUnsafeBytes { HeadParser.findEnd($0, from: max(0, split - 3)) }
            #expect(resumed == expected, "split at \(split)")
        }
    }

    @Test func parsesAResponseHead() throws {
        let bytes = Array("HTTP/1.0 404 Not Found\r\nContent-Length: 3\r\n\r\n".utf8)
        let head: ResponseHead = try bytes.withUnsafeBytes { p in
            var head = ResponseHead()
            try HeadParser.parseResponse(p, into: &head, limits: limits)
            return head
        }
        #expect(head.status == 404)
        #expect(head.minorVersion == 0)
        #expect(!head.keepAlive)
        #expect(head.headers.contentLength == 3)
    }

    @Test func refusesTooManyFields() {
        let many = (0..<101).map { "X-\($0): v\r\n" }.joined()
        #expect(throws: HeadError.headerTooLarge) { try parse("GET / HTTP/1.1\r\nHost: a\r\n\(many)\r\n") }
    }
}

@Suite struct ChunkedDecoderTests {
    func decode(_ pieces: [String]) throws -> (String, Bool, String) {
        var decoder = ChunkedDecoder()
        var data = ""
        var ended = false
        var rest = ""
        for piece in pieces {
            var buffer = ByteBuffer(string: piece)
            while let event = try decoder.next(&buffer) {
                switch event {
                case .data(let slice): data += String(buffer: slice)
                case .end: ended = true
                }
            }
            rest += String(buffer: buffer)
        }
        return (data, ended, rest)
    }

    @Test func decodesSplitAtEveryBoundary() throws {
        let body = "4\r\nWiki\r\n5;name=v\r\npedia\r\nE\r\n in\r\n\r\nchunks.\r\n0\r\nTrailer: x\r\n\r\nNEXT"
        for split in 0...body.count {
            let a = String(body.prefix(split)), b = String(body.dropFirst(split))
            let (data, ended, rest) = try decode([a, b])
            #expect(data == "Wikipedia in\r\n\r\nchunks.", "split at \(split)")
            #expect(ended)
            #expect(rest == "NEXT")
        }
    }

    @Test func refusesBadFraming() {
        for bad in ["x\r\n", "5\r\nhelloX", "5\nhello", "fffffffffffffffff\r\n", "\r\n", "5;a\u{1}b\r\nhello"] {
            #expect(throws: ChunkedDecoder.Failure.self, "\(bad.debugDescription)") {
                _ = try decode([bad, "\r\n0\r\n\r\n"])
            }
        }
    }
}
