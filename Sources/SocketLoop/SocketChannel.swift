import CEpoll
import Glibc
import NIOCore
import Synchronization

/// A NIO `Channel` over a ``TCPConnection``: a `ChannelPipeline` of ordinary handlers (the
/// proxy's, Redis's, TLS, HTTP codecs) on a ``SocketLoop``.
///
/// It replaces NIO's `SocketChannel` on the data plane. Measured here (README, "What bounds the
/// proxy"), NIO's `BaseSocketChannel` spent about a third of the gateway's user time per
/// request on its own bookkeeping; this one keeps the contract handlers rely on and little
/// else:
/// - events: `channelRegistered`, `channelActive`, `channelRead`, `channelReadComplete`,
///   `channelWritabilityChanged`, `errorCaught` (a socket error, before the close),
///   `channelInactive`, `channelUnregistered`, then the handlers are removed and
///   `closeFuture` completes;
/// - writes take `ByteBuffer` or `IOData.byteBuffer`; a write's promise succeeds once the
///   kernel has taken its bytes and fails if the channel closes first;
/// - `read()` and `autoRead` as in NIO: reading stops unless the pipeline asks again after
///   each `channelReadComplete` (which `autoRead` does);
/// - options: `autoRead`, `writeBufferWaterMark`, integer socket options, `allowRemoteHalfClosure`
///   (false only: end of stream closes the channel).
///
/// Loop-bound, like NIO's channels: only `isActive`, `isWritable`, `closeFuture` and the
/// future-returning calls may be used from other threads.
public final class SocketChannel: Channel, ChannelCore, ByteStreamDelegate, @unchecked Sendable {
    // @unchecked Sendable: mutable state is touched on the loop only (NIO's own rule for
    // channels); the two flags read from anywhere are atomics.

    /// The socket underneath, for callers that need its descriptor or counters.
    public let connection: TCPConnection
    /// What the channel reads and writes: the socket itself, or a stream over it (TLS).
    private let stream: any ByteStream
    /// The stream was started (and its delegate set) by whoever handed it over.
    private let adopted: Bool
    private var _pipeline: ChannelPipeline!
    private let closePromise: EventLoopPromise<Void>
    private let active = Atomic<Bool>(false)
    private let writable = Atomic<Bool>(true)
    private var autoRead = true
    private var readRequested = false
    private var closing: EventLoopPromise<Void>?
    private var cachedLocalAddress: SocketAddress?

    /// Wraps `connection` (call on its loop). Nothing is read before ``activate()``.
    public init(_ connection: TCPConnection) {
        connection.loop.preconditionInEventLoop()
        self.connection = connection
        self.stream = connection
        self.adopted = false
        closePromise = connection.loop.makePromise()
        _pipeline = ChannelPipeline(channel: self)
    }

    /// Wraps a stream already serving `connection` (a TLS stream, or the socket itself) that a
    /// connection handler hands over, as an HTTP/1 connection becomes an HTTP/2 one: its
    /// caller makes this channel the stream's delegate before ``activate()``.
    public init(adopting stream: any ByteStream, over connection: TCPConnection) {
        connection.loop.preconditionInEventLoop()
        self.connection = connection
        self.stream = stream
        self.adopted = true
        closePromise = connection.loop.makePromise()
        _pipeline = ChannelPipeline(channel: self)
    }

    /// Registers the channel and fires `channelRegistered` and `channelActive` through the
    /// handlers added so far, then starts reading if `autoRead` is on.
    public func activate() throws(SocketError) {
        if !adopted { try connection.start(delegate: self) }
        cachedLocalAddress = TCPListener.boundAddress(connection.fd)
        if !autoRead { stream.pauseReads() }
        active.store(true, ordering: .relaxed)
        let pipeline = _pipeline.syncOperations
        pipeline.fireChannelRegistered()
        pipeline.fireChannelActive()
        if autoRead, stream.isOpen { pipeline.read() }
    }

    // MARK: Channel

    public var eventLoop: EventLoop { connection.loop }
    public var allocator: ByteBufferAllocator { ByteBufferAllocator() }
    public var closeFuture: EventLoopFuture<Void> { closePromise.futureResult }
    public var pipeline: ChannelPipeline { _pipeline }
    public var parent: Channel? { nil }
    public var isWritable: Bool { writable.load(ordering: .relaxed) }
    public var isActive: Bool { active.load(ordering: .relaxed) }
    public var _channelCore: ChannelCore { self }
    public var remoteAddress: SocketAddress? { connection.remoteAddress }

    /// Read once, at activation: other threads may ask, and it must not change under them.
    public var localAddress: SocketAddress? { cachedLocalAddress }

    public var syncOptions: NIOSynchronousChannelOptions? { SyncOptions(channel: self) }

    public func setOption<Option: ChannelOption>(_ option: Option, value: Option.Value) -> EventLoopFuture<Void> {
        if eventLoop.inEventLoop {
            return eventLoop.makeCompletedFuture { try setOption0(option, value) }
        }
        let bound = LoopOnly((option, value))
        return eventLoop.submit { try self.setOption0(bound.value.0, bound.value.1) }
    }

    public func getOption<Option: ChannelOption>(_ option: Option) -> EventLoopFuture<Option.Value> {
        if eventLoop.inEventLoop {
            return eventLoop.makeCompletedFuture { try getOption0(option) }.map { $0 }
        }
        let bound = LoopOnly(option)
        return eventLoop.submit { LoopOnly(try self.getOption0(bound.value)) }.map { $0.value }
    }

    private struct SyncOptions: NIOSynchronousChannelOptions {
        let channel: SocketChannel

        func setOption<Option: ChannelOption>(_ option: Option, value: Option.Value) throws {
            channel.eventLoop.preconditionInEventLoop()
            try channel.setOption0(option, value)
        }

        func getOption<Option: ChannelOption>(_ option: Option) throws -> Option.Value {
            channel.eventLoop.preconditionInEventLoop()
            return try channel.getOption0(option)
        }
    }

    private func setOption0<Option: ChannelOption>(_ option: Option, _ value: Option.Value) throws {
        switch option {
        case is ChannelOptions.Types.AutoReadOption:
            let on = value as! Bool
            guard on != autoRead else { return }
            autoRead = on
            if on {
                read0()
            } else {
                readRequested = false
                stream.pauseReads()
            }
        case let socketOption as ChannelOptions.Types.SocketOption:
            guard connection.isOpen else { throw ChannelError.ioOnClosedChannel }
            let rc = cepoll_set_int(connection.fd, Int32(socketOption.level), Int32(socketOption.name), Int32(truncatingIfNeeded: value as! SocketOptionValue))
            guard rc == 0 else { throw SocketError.system("setsockopt", cepoll_errno()) }
        case is ChannelOptions.Types.WriteBufferWaterMarkOption:
            let marks = value as! ChannelOptions.Types.WriteBufferWaterMark
            connection.writeWatermarks = (marks.low, marks.high)
        case is ChannelOptions.Types.AllowRemoteHalfClosureOption:
            guard !(value as! Bool) else { throw ChannelError.operationUnsupported }
        case is ChannelOptions.Types.MaxMessagesPerReadOption, is ChannelOptions.Types.RecvAllocatorOption,
            is ChannelOptions.Types.ConnectTimeoutOption:
            // Fixed here (reads of 16 KB, at most 4 an event; connect timeouts are arguments).
            return
        default:
            throw ChannelError.operationUnsupported
        }
    }

    private func getOption0<Option: ChannelOption>(_ option: Option) throws -> Option.Value {
        switch option {
        case is ChannelOptions.Types.AutoReadOption:
            return autoRead as! Option.Value
        case is ChannelOptions.Types.WriteBufferWaterMarkOption:
            let marks = connection.writeWatermarks
            return ChannelOptions.Types.WriteBufferWaterMark(low: marks.low, high: marks.high) as! Option.Value
        case is ChannelOptions.Types.AllowRemoteHalfClosureOption:
            return false as! Option.Value
        case let socketOption as ChannelOptions.Types.SocketOption:
            var value: Int32 = 0
            var length = socklen_t(MemoryLayout<Int32>.size)
            guard getsockopt(connection.fd, Int32(socketOption.level), Int32(socketOption.name), &value, &length) == 0 else {
                throw SocketError.system("getsockopt", cepoll_errno())
            }
            return SocketOptionValue(value) as! Option.Value
        default:
            throw ChannelError.operationUnsupported
        }
    }

    // MARK: ChannelCore

    public func localAddress0() throws -> SocketAddress {
        guard let address = localAddress else { throw ChannelError.unknownLocalAddress }
        return address
    }

    public func remoteAddress0() throws -> SocketAddress {
        guard let address = remoteAddress else { throw ChannelError.operationUnsupported }
        return address
    }

    public func register0(promise: EventLoopPromise<Void>?) { promise?.succeed() }
    public func registerAlreadyConfigured0(promise: EventLoopPromise<Void>?) { promise?.succeed() }

    public func bind0(to: SocketAddress, promise: EventLoopPromise<Void>?) {
        promise?.fail(ChannelError.operationUnsupported)
    }

    public func connect0(to: SocketAddress, promise: EventLoopPromise<Void>?) {
        // Connected at birth (``connect(to:on:timeout:initializer:)``).
        promise?.fail(ChannelError.operationUnsupported)
    }

    public func write0(_ data: NIOAny, promise: EventLoopPromise<Void>?) {
        if let bytes = tryUnwrapData(data, as: ByteBuffer.self) {
            stream.write(bytes, promise: promise)
            return
        }
        switch tryUnwrapData(data, as: IOData.self) {
        case .byteBuffer(let bytes): stream.write(bytes, promise: promise)
        case .fileRegion, nil: promise?.fail(ChannelError.operationUnsupported)
        }
    }

    public func flush0() { stream.flush() }

    public func read0() {
        guard !readRequested, stream.isOpen else { return }
        readRequested = true
        stream.resumeReads()
    }

    public func close0(error: Error, mode: CloseMode, promise: EventLoopPromise<Void>?) {
        guard mode == .all else {
            promise?.fail(ChannelError.operationUnsupported)
            return
        }
        guard stream.isOpen else {
            promise?.fail(ChannelError.alreadyClosed)
            return
        }
        closing = promise
        stream.close(error: nil)
    }

    /// Sends what is queued, then closes, first draining what the peer still sends for a
    /// moment (at most `lingering` and `maxDrained` bytes) so that its last frames (an HTTP/2
    /// `GOAWAY`) are not lost to a reset.
    public func closeAfterFlush(lingering: TimeAmount = .seconds(2), maxDrained: Int = 1 << 20) {
        eventLoop.preconditionInEventLoop()
        guard stream.isOpen else { return }
        stream.closeAfterFlush(lingering: lingering, maxDrained: maxDrained)
    }

    public func triggerUserOutboundEvent0(_ event: Any, promise: EventLoopPromise<Void>?) {
        promise?.fail(ChannelError.operationUnsupported)
    }

    public func channelRead0(_ data: NIOAny) {}
    public func errorCaught0(error: Error) {}

    // MARK: ByteStreamDelegate

    public func streamRead(_ stream: ByteStream, _ bytes: ByteBuffer) {
        _pipeline.syncOperations.fireChannelRead(NIOAny(bytes))
    }

    public func streamReadComplete(_ stream: ByteStream) {
        readRequested = false
        let pipeline = _pipeline.syncOperations
        pipeline.fireChannelReadComplete()
        guard stream.isOpen else { return }
        if autoRead { pipeline.read() }
        // Nobody asked for more: stop until someone does (as NIO does without `autoRead`).
        if !readRequested { stream.pauseReads() }
    }

    public func streamWritabilityChanged(_ stream: ByteStream) {
        writable.store(stream.isWritable, ordering: .relaxed)
        _pipeline.syncOperations.fireChannelWritabilityChanged()
    }

    public func streamClosed(_ stream: ByteStream, error: SocketError?) {
        active.store(false, ordering: .relaxed)
        let pipeline = _pipeline.syncOperations
        if let promise = closing {
            closing = nil
            promise.succeed()
        }
        if let error { pipeline.fireErrorCaught(error) }
        pipeline.fireChannelInactive()
        pipeline.fireChannelUnregistered()
        // Later, as NIO does: the code that closed may still be walking the pipeline.
        connection.loop.enqueue { [self] in
            removeHandlers(pipeline: _pipeline)
            closePromise.succeed()
        }
    }
}
