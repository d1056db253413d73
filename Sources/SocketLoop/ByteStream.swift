import NIOCore

/// A connection as the proxy's handlers see it: bytes out, reads on or off, closing. The
/// gateway's sockets (``TCPConnection``) are one; `moongate test`'s in-memory pipes are the other.
public protocol ByteStream: AnyObject {
    /// The peer, when known.
    var remoteAddress: SocketAddress? { get }
    var isOpen: Bool { get }
    /// False while too much is queued (see ``TCPConnection/writeWatermarks``).
    var isWritable: Bool { get }
    /// Queues `bytes`; `promise` completes once they are sent.
    func write(_ bytes: ByteBuffer, promise: EventLoopPromise<Void>?)
    func flush()
    /// Closes now; `error` says why (nil: an orderly close). The delegate hears of it once.
    func close(error: SocketError?)
    /// Sends what is queued, then closes; with `lingering`, first drains what the peer still
    /// sends, for at most that long and `maxDrained` bytes, so the answer is not lost to a reset.
    func closeAfterFlush(lingering: TimeAmount?, maxDrained: Int)
    func pauseReads()
    func resumeReads()
}

/// What a ``ByteStream`` tells its owner. Every call comes on the stream's loop.
public protocol ByteStreamDelegate: AnyObject {
    /// Bytes arrived. The buffer may share storage with the loop's receive buffer; keeping it
    /// (or a slice) is safe, it only makes the next read allocate.
    func streamRead(_ stream: ByteStream, _ bytes: ByteBuffer)
    /// The reads of one readiness event are done: the place to flush what they produced.
    func streamReadComplete(_ stream: ByteStream)
    /// ``ByteStream/isWritable`` changed: stop or resume producing.
    func streamWritabilityChanged(_ stream: ByteStream)
    /// The stream is closed, by either side or an error (`nil`: an orderly close or end of
    /// stream). Called once; the stream forgets its delegate afterwards.
    func streamClosed(_ stream: ByteStream, error: SocketError?)
}

extension ByteStream {
    public func close() { close(error: nil) }
    public func write(_ bytes: ByteBuffer) { write(bytes, promise: nil) }
    public func closeAfterFlush() { closeAfterFlush(lingering: nil, maxDrained: 0) }
}

extension ByteStreamDelegate {
    public func streamReadComplete(_ stream: ByteStream) {}
    public func streamWritabilityChanged(_ stream: ByteStream) {}
}
