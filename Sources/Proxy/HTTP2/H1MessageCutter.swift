// Hot path: every answer to an HTTP/2 client, and every request to an HTTP/2 upstream.
import NIOCore

/// An HTTP/1.1 message as a handler writes it to a lane, cut into what an HTTP/2 stream
/// carries: its head once whole, then body slices, then its end (with the trailer section of
/// a chunked body). The server side's lanes cut answers with it (``H2Lane``), the client
/// side's requests (``H2ClientLane``); each parses the head itself and says how the body is
/// framed.
struct H1MessageCutter {
    enum Body {
        case none
        case length(Int)
        case chunked
        /// Until the handler closes (an answer without a length).
        case untilClose
    }

    enum Event {
        /// The whole head, its blank line included. The lane parses it and calls
        /// ``framed(_:)``, or ``expectHead()`` after an interim (1xx) answer.
        case head(ByteBuffer)
        case data(ByteBuffer, end: Bool)
        /// A chunked body ended; its trailer section, when it had one.
        case end(trailers: ByteBuffer?)
    }

    enum Failure: Error {
        /// No end of head within the bound.
        case headTooLarge
        /// The handler's chunked framing is broken (it checked it itself: a bug).
        case malformedChunk
    }

    private enum State {
        case head(ByteBuffer?)
        case length(remaining: Int)
        case chunked(ChunkedDecoder)
        case untilClose
        case done
    }

    private var state: State
    let maxHead: Int

    init(maxHead: Int, expectingHead: Bool) {
        self.maxHead = maxHead
        state = expectingHead ? .head(nil) : .done
    }

    /// A new message starts (or, after an interim answer, the final head comes next).
    mutating func expectHead() { state = .head(nil) }

    /// How the body after the head just cut is framed.
    mutating func framed(_ body: Body) {
        switch body {
        case .none: state = .done
        case .length(let n): state = n > 0 ? .length(remaining: n) : .done
        case .chunked: state = .chunked(ChunkedDecoder())
        case .untilClose: state = .untilClose
        }
    }

    /// The message is over (an until-close body, by the close).
    mutating func finish() { state = .done }

    var isDone: Bool {
        if case .done = state { return true }
        return false
    }

    var isHeadPending: Bool {
        if case .head = state { return true }
        return false
    }

    var isUntilClose: Bool {
        if case .untilClose = state { return true }
        return false
    }

    /// The next piece of the message in `bytes` (taken from it), or nil when more must come or
    /// the message is over (bytes past its end are left in `bytes`).
    mutating func next(_ bytes: inout ByteBuffer) throws(Failure) -> Event? {
        switch state {
        case .head(var soFar):
            guard bytes.readableBytes > 0 else { return nil }
            if soFar == nil { soFar = bytes } else { soFar!.writeBuffer(&bytes) }
            bytes.moveReaderIndex(to: bytes.writerIndex)
            let end: Int? = soFar!.withUnsafeReadableBytes { HeadParser.findEnd($0, from: 0) }
            guard let end else {
                guard soFar!.readableBytes <= maxHead else { throw .headTooLarge }
                state = .head(soFar)
                return nil
            }
            let head = soFar!.readSlice(length: end)!
            bytes = soFar!
            state = .head(nil)
            return .head(head)
        case .length(let remaining):
            guard bytes.readableBytes > 0 else { return nil }
            let take = min(remaining, bytes.readableBytes)
            let slice = bytes.readSlice(length: take)!
            state = remaining == take ? .done : .length(remaining: remaining - take)
            return .data(slice, end: remaining == take)
        case .chunked(var decoder):
            let event: ChunkedDecoder.Event?
            do {
                event = try decoder.next(&bytes)
            } catch {
                throw .malformedChunk
            }
            switch event {
            case nil:
                state = .chunked(decoder)
                return nil
            case .data(let slice):
                state = .chunked(decoder)
                return .data(slice, end: false)
            case .end:
                state = .done
                return .end(trailers: decoder.trailers)
            }
        case .untilClose:
            guard bytes.readableBytes > 0 else { return nil }
            let all = bytes
            bytes.moveReaderIndex(to: bytes.writerIndex)
            return .data(all, end: false)
        case .done:
            return nil
        }
    }
}
