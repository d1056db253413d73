import NIOCore
import Testing

@testable import Proxy

/// The reader `upstream.call` uses for its answers: each framing, split at every byte
/// boundary, and the answers it must not trust or keep.
@Suite struct ResponseReaderTests {
    /// Feeds `wire` in two pieces split at `split`; the progress after the last byte.
    static func read(_ wire: String, split: Int, maxBytes: Int = 1 << 20, isHEAD: Bool = false, close: Bool = false) -> (ResponseReader.Progress, ResponseReader) {
        var reader = ResponseReader(maxBytes: maxBytes, isHEAD: isHEAD)
        let bytes = Array(wire.utf8)
        var progress = ResponseReader.Progress.more
        for part in [bytes[..<split], bytes[split...]] where !part.isEmpty {
            progress = reader.read(ByteBuffer(bytes: part))
            if progress != .more { return (progress, reader) }
        }
        if close { progress = reader.closed() }
        return (progress, reader)
    }

    static func eachSplit(_ wire: String, _ check: (ResponseReader.Progress, ResponseReader, Int) -> Void, maxBytes: Int = 1 << 20, isHEAD: Bool = false, close: Bool = false) {
        for split in 0...wire.utf8.count {
            let (progress, reader) = read(wire, split: split, maxBytes: maxBytes, isHEAD: isHEAD, close: close)
            check(progress, reader, split)
        }
    }

    @Test func readsEachFraming() {
        Self.eachSplit("HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 5\r\n\r\nhello") { progress, reader, split in
            #expect(progress == .done(reusable: true), "split \(split)")
            #expect(reader.status == 200 && String(buffer: reader.body) == "hello")
            #expect(reader.headers.first { $0.0 == "Content-Type" }?.1 == "text/plain")
        }
        Self.eachSplit("HTTP/1.1 201 Created\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n2;x=y\r\nde\r\n0\r\nTrailer: 1\r\n\r\n") { progress, reader, split in
            #expect(progress == .done(reusable: true), "split \(split)")
            #expect(reader.status == 201 && String(buffer: reader.body) == "abcde")
        }
        Self.eachSplit("HTTP/1.1 200 OK\r\n\r\nuntil the end", { progress, reader, split in
            #expect(progress == .done(reusable: false), "split \(split)")
            #expect(String(buffer: reader.body) == "until the end")
        }, close: true)
        // No body whatever the head says: HEAD, 204, 304.
        Self.eachSplit("HTTP/1.1 200 OK\r\nContent-Length: 99\r\n\r\n", { progress, _, split in
            #expect(progress == .done(reusable: true), "split \(split)")
        }, isHEAD: true)
        Self.eachSplit("HTTP/1.1 204 No Content\r\n\r\n") { progress, _, _ in #expect(progress == .done(reusable: true)) }
    }

    @Test func skipsInterimResponses() {
        Self.eachSplit("HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 103 Early Hints\r\nLink: </a>\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok") { progress, reader, split in
            #expect(progress == .done(reusable: true), "split \(split)")
            #expect(reader.status == 200 && String(buffer: reader.body) == "ok")
        }
    }

    @Test func connectionsOutOfStepAreNotReused() {
        // Bytes after the response, or an origin that says it closes.
        #expect(Self.read("HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nokEXTRA", split: 0).0 == .done(reusable: false))
        #expect(Self.read("HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 2\r\n\r\nok", split: 0).0 == .done(reusable: false))
        #expect(Self.read("HTTP/1.0 200 OK\r\nContent-Length: 2\r\n\r\nok", split: 0).0 == .done(reusable: false))
    }

    @Test func refusesWhatCannotBeTrustedOrKept() {
        #expect(Self.read("HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n\r\n", split: 0).0 == .invalid)
        #expect(Self.read("NOT HTTP\r\n\r\n", split: 0).0 == .invalid)
        #expect(Self.read("HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n", split: 0).0 == .invalid)
        // Cut short: a length-delimited body, or no head at all.
        #expect(Self.read("HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nabc", split: 0, close: true).0 == .invalid)
        #expect(Self.read("HTTP/1.1 200", split: 0, close: true).0 == .invalid)
        // Larger than allowed, however it is framed.
        #expect(Self.read("HTTP/1.1 200 OK\r\nContent-Length: 11\r\n\r\n", split: 0, maxBytes: 10).0 == .tooLarge)
        #expect(Self.read("HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nb\r\nhello world\r\n0\r\n\r\n", split: 0, maxBytes: 10).0 == .tooLarge)
        #expect(Self.read("HTTP/1.1 200 OK\r\n\r\nhello world", split: 0, maxBytes: 10).0 == .tooLarge)
        let hugeHead = "HTTP/1.1 200 OK\r\n" + String(repeating: "X-Pad: \(String(repeating: "a", count: 1000))\r\n", count: 70)
        #expect(Self.read(hugeHead, split: 0).0 == .tooLarge)
    }
}
