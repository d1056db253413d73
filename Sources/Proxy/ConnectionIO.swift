// Hot path: every byte the proxy sends goes through here.
import NIOCore
import SocketLoop

/// Where a proxy connection handler sends its bytes: straight to a socket on the worker's
/// `SocketLoop` (the gateway), or into a NIO `ChannelPipeline` (the `moongate test` harness's
/// `EmbeddedChannel`s, NIO loops in tests).
///
/// Why not always the pipeline: measured on the proxy scenario (callgrind, README "What bounds
/// the proxy"), a `SocketChannel` pipeline between the handlers and their sockets cost about
/// 3K of 19.7K instructions per request: `NIOAny` boxing, context hops and their retains.
enum ConnectionIO {
    case socket(TCPConnection)
    case pipeline(ChannelHandlerContext)
    /// Not attached yet, or detached from a removed handler.
    case none

    var isAttached: Bool {
        if case .none = self { return false }
        return true
    }

    @inline(__always)
    func write(_ bytes: ByteBuffer, promise: EventLoopPromise<Void>? = nil) {
        switch self {
        case .socket(let connection): connection.write(bytes, promise: promise)
        case .pipeline(let context): context.write(NIOAny(bytes), promise: promise)
        case .none: promise?.fail(ChannelError.ioOnClosedChannel)
        }
    }

    @inline(__always)
    func flush() {
        switch self {
        case .socket(let connection): connection.flush()
        case .pipeline(let context): context.flush()
        case .none: break
        }
    }

    func close() {
        switch self {
        case .socket(let connection): connection.close()
        case .pipeline(let context): context.close(promise: nil)
        case .none: break
        }
    }

    /// How long a closing client connection keeps reading and dropping what the client still
    /// sends, and how much of it, so that the answer is not destroyed by a reset (see
    /// `TCPConnection.closeAfterFlush(lingering:)`). nginx drains for up to 30 s; a shorter
    /// window is enough for a refused request still in flight.
    static let lingerTime: TimeAmount = .seconds(5)
    static let lingerBytes = 16 << 20

    /// Sends what is queued, then closes; `linger` drains the client's unread bytes first.
    func closeAfterFlush(linger: Bool = false) {
        switch self {
        case .socket(let connection):
            if linger {
                connection.closeAfterFlush(lingering: Self.lingerTime, maxDrained: Self.lingerBytes)
            } else {
                connection.closeAfterFlush()
            }
        case .pipeline(let context):
            let promise = context.eventLoop.makePromise(of: Void.self)
            context.writeAndFlush(NIOAny(context.channel.allocator.buffer(capacity: 0)), promise: promise)
            promise.futureResult.assumeIsolatedUnsafeUnchecked().whenComplete { _ in
                context.close(promise: nil)
            }
        case .none:
            break
        }
    }

    /// Stops or resumes reading (back-pressure); `autoRead` on a pipeline.
    func setReading(_ on: Bool) {
        switch self {
        case .socket(let connection): if on { connection.resumeReads() } else { connection.pauseReads() }
        case .pipeline(let context): try? context.channel.syncOptions?.setOption(.autoRead, value: on)
        case .none: break
        }
    }

    var eventLoop: EventLoop? {
        switch self {
        case .socket(let connection): return connection.loop
        case .pipeline(let context): return context.eventLoop
        case .none: return nil
        }
    }

    var remoteAddress: SocketAddress? {
        switch self {
        case .socket(let connection): return connection.remoteAddress
        case .pipeline(let context): return context.channel.remoteAddress
        case .none: return nil
        }
    }
}
