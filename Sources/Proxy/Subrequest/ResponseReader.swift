import NIOCore

/// Reads one HTTP/1.1 response off an upstream connection into memory: the head, then a
/// body of at most `maxBytes`, framed as RFC 9112 6.3 says. A value fed with the bytes as
/// they come; what it returns says what the connection's owner does next.
struct ResponseReader {
    enum Progress: Equatable {
        /// More bytes are needed.
        case more
        /// The response is complete; `reusable` if the connection may carry another request.
        case done(reusable: Bool)
        /// The body (or head) is larger than allowed.
        case tooLarge
        /// Not a response this reader can trust (bad head, bad framing, a `101`, cut short).
        case invalid
    }

    private enum Stage {
        case head
        case body(Body)
        case done
    }

    private enum Body {
        case length(remaining: Int)
        case chunked(ChunkedDecoder)
        case untilClose
    }

    let maxBytes: Int
    /// The request was a `HEAD`: the response has no body whatever its head says.
    let isHEAD: Bool
    private(set) var status = 0
    private(set) var headers: [(String, String)] = []
    private(set) var body = ByteBuffer()
    /// A head that has not fully arrived.
    private var partialHead: ByteBuffer?
    private var stage = Stage.head
    private var keepAlive = true

    /// Largest response head accepted.
    static let maxHeadBytes = 64 * 1024
    /// Header fields kept for the script; the rest are dropped.
    static let maxFields = 100

    init(maxBytes: Int, isHEAD: Bool) {
        self.maxBytes = maxBytes
        self.isHEAD = isHEAD
    }

    /// Whether a final (non-1xx) response head has arrived.
    var answered: Bool { status >= 200 }

    mutating func read(_ bytes: ByteBuffer) -> Progress {
        var buffer = bytes
        while true {
            switch stage {
            case .head:
                let progress = readHead(&buffer)
                if progress != .more { return progress }
                // Else an interim response was skipped, or the body starts: go on with the rest.
                if case .head = stage, partialHead != nil || buffer.readableBytes == 0 { return .more }
            case .body(let framing):
                return readBody(framing, &buffer)
            case .done:
                // Bytes past the response: the connection is out of step.
                return .done(reusable: false)
            }
        }
    }

    /// The connection ended: the end of a close-delimited body, else a response cut short.
    mutating func closed() -> Progress {
        if case .body(.untilClose) = stage {
            stage = .done
            return .done(reusable: false)
        }
        return .invalid
    }

    private mutating func readHead(_ buffer: inout ByteBuffer) -> Progress {
        if var partial = partialHead {
            partial.writeBuffer(&buffer)
            buffer = partial
            partialHead = nil
        }
        guard let end = buffer.withUnsafeReadableBytes({ HeadParser.findEnd($0, from: 0) }) else {
            if buffer.readableBytes > Self.maxHeadBytes { return .tooLarge }
            partialHead = buffer
            return .more
        }
        let head = buffer.readSlice(length: end)!
        var parsed = ResponseHead()
        let limits = HeadLimits(maxHeaderBytes: Self.maxHeadBytes, maxHeaderCount: 1000, maxURIBytes: 0)
        let ok: Bool = head.withUnsafeReadableBytes { p in
            do throws(HeadError) {
                try HeadParser.parseResponse(p, into: &parsed, limits: limits)
                return true
            } catch {
                return false
            }
        }
        guard ok, parsed.status != 101 else { return .invalid }
        // Interim responses (100 Continue, 103 Early Hints) are skipped.
        if parsed.status < 200 { return .more }
        status = parsed.status
        keepAlive = parsed.keepAlive
        headers.removeAll()
        head.withUnsafeReadableBytes { p in
            for field in parsed.headers.fields.prefix(Self.maxFields) {
                headers.append((
                    String(decoding: UnsafeRawBufferPointer(rebasing: p[field.name.lower..<field.name.upper]), as: UTF8.self),
                    String(decoding: UnsafeRawBufferPointer(rebasing: p[field.value.lower..<field.value.upper]), as: UTF8.self)
                ))
            }
        }
        if isHEAD || status == 204 || status == 304 {
            stage = .done
            return .done(reusable: keepAlive && buffer.readableBytes == 0)
        }
        if parsed.headers.chunked {
            stage = .body(.chunked(ChunkedDecoder()))
        } else if let length = parsed.headers.contentLength {
            if length > maxBytes { return .tooLarge }
            if length == 0 {
                stage = .done
                return .done(reusable: keepAlive && buffer.readableBytes == 0)
            }
            body.reserveCapacity(length)
            stage = .body(.length(remaining: length))
        } else {
            keepAlive = false
            stage = .body(.untilClose)
        }
        return .more
    }

    private mutating func readBody(_ framing: Body, _ buffer: inout ByteBuffer) -> Progress {
        switch framing {
        case .length(let remaining):
            let take = min(remaining, buffer.readableBytes)
            var slice = buffer.readSlice(length: take)!
            body.writeBuffer(&slice)
            guard remaining == take else {
                stage = .body(.length(remaining: remaining - take))
                return .more
            }
            stage = .done
            return .done(reusable: keepAlive && buffer.readableBytes == 0)
        case .chunked(var decoder):
            do {
                while let event = try decoder.next(&buffer) {
                    switch event {
                    case .data(var slice):
                        guard body.readableBytes + slice.readableBytes <= maxBytes else { return .tooLarge }
                        body.writeBuffer(&slice)
                    case .end:
                        stage = .done
                        return .done(reusable: keepAlive && buffer.readableBytes == 0)
                    }
                }
            } catch {
                return .invalid
            }
            stage = .body(.chunked(decoder))
            return .more
        case .untilClose:
            guard body.readableBytes + buffer.readableBytes <= maxBytes else { return .tooLarge }
            body.writeBuffer(&buffer)
            return .more
        }
    }
}
