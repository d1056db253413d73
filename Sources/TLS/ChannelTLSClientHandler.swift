import NIOCore
import SocketLoop

/// TLS for a NIO pipeline (the small HTTP client's https) on the same OpenSSL streams the
/// proxy uses: a client `TLSStream` whose lower stream is the channel below this handler.
/// Plaintext goes up and down the pipeline; a failed handshake arrives as an error naming
/// OpenSSL's reason (`certificate verify failed (hostname mismatch)`).
///
/// Why not NIOSSL's handler: it brings a second TLS library (BoringSSL) into the binary, a
/// few megabytes, for the fetches of JWKS documents and the like.
public final class ChannelTLSClientHandler: ChannelDuplexHandler, ByteStreamDelegate {
    public typealias InboundIn = ByteBuffer
    public typealias InboundOut = ByteBuffer
    public typealias OutboundIn = ByteBuffer
    public typealias OutboundOut = ByteBuffer

    private let lower = ChannelStream()
    private let tls: TLSStream
    private var context: ChannelHandlerContext?

    /// `serverName` is sent (SNI) and the certificate must be for it; without one, for the IP
    /// address `address`.
    public init(client: TLSClientContext, serverName: String?, address: String? = nil) throws(SocketError) {
        tls = try TLSStream(connectingOver: lower, client: client, serverName: serverName, address: address)
        lower.delegate = tls
        tls.delegate = self
    }

    public func handlerAdded(context: ChannelHandlerContext) {
        self.context = context
        lower.context = context
        if context.channel.isActive { tls.startHandshake() }
    }

    public func handlerRemoved(context: ChannelHandlerContext) {
        self.context = nil
        lower.context = nil
    }

    public func channelActive(context: ChannelHandlerContext) {
        tls.startHandshake()
        context.fireChannelActive()
    }

    public func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        tls.streamRead(lower, unwrapInboundIn(data))
    }

    public func channelReadComplete(context: ChannelHandlerContext) {
        tls.streamReadComplete(lower)
    }

    public func channelInactive(context: ChannelHandlerContext) {
        lower.closed(error: nil)
        context.fireChannelInactive()
    }

    public func errorCaught(context: ChannelHandlerContext, error: any Error) {
        lower.closed(error: .closed)
        context.fireErrorCaught(error)
    }

    public func write(context: ChannelHandlerContext, data: NIOAny, promise: EventLoopPromise<Void>?) {
        tls.write(unwrapOutboundIn(data), promise: promise)
    }

    public func flush(context: ChannelHandlerContext) {
        tls.flush()
    }

    public func close(context: ChannelHandlerContext, mode: CloseMode, promise: EventLoopPromise<Void>?) {
        // An orderly close sends close_notify first.
        tls.close(error: nil)
        context.close(mode: mode, promise: promise)
    }

    // MARK: ByteStreamDelegate (the TLS stream's plaintext side)

    public func streamRead(_ stream: any ByteStream, _ bytes: ByteBuffer) {
        context?.fireChannelRead(wrapInboundOut(bytes))
    }

    public func streamReadComplete(_ stream: any ByteStream) {
        context?.fireChannelReadComplete()
    }

    public func streamClosed(_ stream: any ByteStream, error: SocketError?) {
        guard let context else { return }
        if let error { context.fireErrorCaught(error) }
        context.close(promise: nil)
    }
}

/// The channel below the TLS handler as the `ByteStream` a `TLSStream` writes to.
private final class ChannelStream: ByteStream {
    weak var delegate: (any ByteStreamDelegate)?
    var context: ChannelHandlerContext?
    private var open = true

    var remoteAddress: SocketAddress? { context?.channel.remoteAddress }
    var isOpen: Bool { open && context != nil }
    var isWritable: Bool { context?.channel.isWritable ?? false }

    func write(_ bytes: ByteBuffer, promise: EventLoopPromise<Void>?) {
        guard let context, open else {
            promise?.fail(SocketError.closed)
            return
        }
        context.write(NIOAny(bytes), promise: promise)
    }

    func flush() { context?.flush() }

    func close(error: SocketError?) {
        guard open else { return }
        context?.flush()
        context?.close(promise: nil)
        closed(error: error)
    }

    func closeAfterFlush(lingering: TimeAmount?, maxDrained: Int) { close(error: nil) }
    func pauseReads() {}
    func resumeReads() {}

    /// The channel closed (or failed) under the stream: its owner hears once.
    func closed(error: SocketError?) {
        guard open else { return }
        open = false
        delegate?.streamClosed(self, error: error)
    }
}
