// Hot path: every byte the proxy sends goes through here.
import NIOCore
import SocketLoop
import TLS

/// Where a proxy connection handler sends its bytes: one of the two `ByteStream`s, a socket on
/// the worker's `SocketLoop` (the gateway) or an in-memory pipe (`moongate test`'s simulation).
/// An enum rather than `any ByteStream` so the socket, every request's case, is called directly
/// instead of through a witness table.
///
/// Why not a NIO pipeline: measured on the proxy scenario (callgrind, README "What bounds the
/// proxy"), a `SocketChannel` pipeline between the handlers and their sockets cost about 3K of
/// 19.7K instructions per request: `NIOAny` boxing, context hops and their retains.
enum ConnectionIO {
    case socket(TCPConnection)
    /// A socket of a TLS listener: plaintext here, TLS records on the socket.
    case tls(TLSStream)
    case memory(MemoryPipe.End)
    /// One HTTP/2 stream at a time, served as an HTTP/1.1 connection (`H2Lane`).
    case h2(H2Lane)
    /// One stream at a time to an HTTP/2 upstream, written as an HTTP/1.1 connection (`H2ClientLane`).
    case h2Client(H2ClientLane)
    /// Not attached yet, or detached once closed.
    case none

    var isAttached: Bool {
        if case .none = self { return false }
        return true
    }

    @inline(__always)
    func write(_ bytes: ByteBuffer, promise: EventLoopPromise<Void>? = nil) {
        switch self {
        case .socket(let connection): connection.write(bytes, promise: promise)
        case .tls(let stream): stream.write(bytes, promise: promise)
        case .memory(let end): end.write(bytes, promise: promise)
        case .h2(let lane): lane.write(bytes, promise: promise)
        case .h2Client(let lane): lane.write(bytes, promise: promise)
        case .none: promise?.fail(ChannelError.ioOnClosedChannel)
        }
    }

    @inline(__always)
    func flush() {
        switch self {
        case .socket(let connection): connection.flush()
        case .tls(let stream): stream.flush()
        case .memory(let end): end.flush()
        case .h2(let lane): lane.flush()
        case .h2Client(let lane): lane.flush()
        case .none: break
        }
    }

    func close() {
        switch self {
        case .socket(let connection): connection.close()
        case .tls(let stream): stream.close()
        case .memory(let end): end.close()
        case .h2(let lane): lane.close(error: nil)
        case .h2Client(let lane): lane.close(error: nil)
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
        case .tls(let stream):
            stream.closeAfterFlush(lingering: linger ? Self.lingerTime : nil, maxDrained: linger ? Self.lingerBytes : 0)
        case .memory(let end):
            end.closeAfterFlush(lingering: linger ? Self.lingerTime : nil, maxDrained: Self.lingerBytes)
        case .h2(let lane):
            lane.closeAfterFlush(lingering: nil, maxDrained: 0)
        case .h2Client(let lane):
            lane.closeAfterFlush(lingering: nil, maxDrained: 0)
        case .none:
            break
        }
    }

    /// Stops or resumes reading (back-pressure).
    func setReading(_ on: Bool) {
        switch self {
        case .socket(let connection): if on { connection.resumeReads() } else { connection.pauseReads() }
        case .tls(let stream): if on { stream.resumeReads() } else { stream.pauseReads() }
        case .memory(let end): if on { end.resumeReads() } else { end.pauseReads() }
        case .h2(let lane): if on { lane.resumeReads() } else { lane.pauseReads() }
        case .h2Client(let lane): if on { lane.resumeReads() } else { lane.pauseReads() }
        case .none: break
        }
    }

    /// The stream itself, now told to report to `delegate` (a tunnel taking the connection over).
    func handOver(to delegate: ByteStreamDelegate) {
        switch self {
        case .socket(let connection): connection.delegate = delegate
        case .tls(let stream): stream.delegate = delegate
        case .memory(let end): end.delegate = delegate
        case .h2(let lane): lane.delegate = delegate
        case .h2Client(let lane): lane.delegate = delegate
        case .none: break
        }
    }

    var stream: (any ByteStream)? {
        switch self {
        case .socket(let connection): return connection
        case .tls(let stream): return stream
        case .memory(let end): return end
        case .h2(let lane): return lane
        case .h2Client(let lane): return lane
        case .none: return nil
        }
    }

    var eventLoop: EventLoop? {
        switch self {
        case .socket(let connection): return connection.loop
        case .tls(let stream): return (stream.lower as? TCPConnection)?.loop
        case .memory(let end): return end.loop
        case .h2(let lane): return lane.loop
        case .h2Client(let lane): return lane.loop
        case .none: return nil
        }
    }

    var remoteAddress: SocketAddress? {
        switch self {
        case .socket(let connection): return connection.remoteAddress
        case .tls(let stream): return stream.remoteAddress
        case .memory(let end): return end.remoteAddress
        case .h2(let lane): return lane.remoteAddress
        case .h2Client(let lane): return lane.remoteAddress
        case .none: return nil
        }
    }
}
