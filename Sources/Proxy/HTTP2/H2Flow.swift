import NIOCore
import NIOHTTP2
import SocketLoop

/// Frames out to NIO's `NIOHTTP2Handler` for one upstream connection (the client side; the
/// server side writes its own frames, `H2Connection`): written as streams produce them,
/// flushed once for all of them, at the end of the read in progress or after the loop turn.
final class H2FrameOutput {
    let loop: SocketLoop
    var context: ChannelHandlerContext?
    /// The channel has closed: frames are refused.
    var closed = false
    private var reading = false
    private var unflushed = false
    private var flushScheduled = false

    init(loop: SocketLoop) {
        self.loop = loop
    }

    func send(_ frame: HTTP2Frame, promise: EventLoopPromise<Void>?) {
        guard let context, !closed else {
            promise?.fail(ChannelError.ioOnClosedChannel)
            return
        }
        context.write(NIOAny(frame), promise: promise)
        unflushed = true
    }

    func requestFlush() {
        guard unflushed, !reading, !flushScheduled else { return }
        flushScheduled = true
        loop.enqueue { [self] in
            flushScheduled = false
            flushNow()
        }
    }

    /// Flow-controlled bytes received since the connection's window was last topped up.
    private var connectionCredit = 0

    /// A DATA frame of `length` flow-controlled bytes arrived: the connection's window is given
    /// back as they come (each stream's only as its handler takes them), in large steps.
    func received(_ length: Int) {
        connectionCredit += length
        guard connectionCredit >= H2Connection.connectionCreditThreshold else { return }
        send(HTTP2Frame(streamID: .rootStream, payload: .windowUpdate(windowSizeIncrement: connectionCredit)), promise: nil)
        connectionCredit = 0
    }

    func readStarted() { reading = true }

    /// The read is over: what it produced goes out now.
    func readEnded() {
        reading = false
        flushNow()
    }

    func flushNow() {
        guard unflushed, let context, !closed else { return }
        unflushed = false
        context.flush()
    }
}

/// A lane's flow control both ways. In (both sides' lanes): bytes held while its handler's
/// reads are paused, and the stream's window given back only as the handler takes them. Out
/// (the client side's, whose frames NIO writes): DATA frames queued and not yet written,
/// counted once a stream has sent enough for back-pressure to matter.
final class H2LaneFlow {
    /// DATA are tracked only past this many bytes a stream has sent.
    static let untrackedBytes = 64 * 1024
    private(set) var held: ByteBuffer?
    /// Flow-controlled bytes inside `held`.
    private var heldBody = 0
    private(set) var readsPaused = false
    private var deliveryScheduled = false
    /// DATA bytes the current stream sent, and those still queued (tracked ones).
    private var sent = 0
    private(set) var pending = 0

    /// Body bytes the handler took since the stream's window was last given back.
    private var consumed = 0

    /// A new stream starts.
    func streamStarted() {
        sent = 0
        consumed = 0
    }

    /// Gives `bytes` to the lane's handler now, or holds them while its reads are paused (or
    /// earlier bytes wait); `body` is how much of the stream's window they hold. Returns the
    /// window to give back, once the handler has taken enough.
    func deliver(_ bytes: ByteBuffer, body: Int, from lane: any ByteStream, to delegate: (any ByteStreamDelegate)?) -> Int? {
        if holdIfNeeded(bytes, body: body) { return nil }
        return hand(bytes, body: body, from: lane, to: delegate)
    }

    /// Gives `bytes` to the lane's handler; the window to give back, as `deliver`.
    func hand(_ bytes: ByteBuffer, body: Int, from lane: any ByteStream, to delegate: (any ByteStreamDelegate)?) -> Int? {
        guard let delegate else { return nil }
        delegate.streamRead(lane, bytes)
        delegate.streamReadComplete(lane)
        guard body > 0 else { return nil }
        consumed += body
        guard consumed >= H2Connection.streamCreditThreshold else { return nil }
        defer { consumed = 0 }
        return consumed
    }

    /// Keeps `bytes` (reads paused, or earlier bytes still held, which must go first); false:
    /// the caller hands them over now.
    func holdIfNeeded(_ bytes: ByteBuffer, body: Int) -> Bool {
        guard readsPaused || held != nil else { return false }
        hold(bytes, body: body)
        return true
    }

    func hold(_ bytes: ByteBuffer, body: Int) {
        if held == nil { held = bytes } else { held!.writeImmutableBuffer(bytes) }
        heldBody += body
    }

    /// What is held, and how much of the stream's window it holds; nil while reads are paused.
    func takeHeld() -> (ByteBuffer, Int)? {
        guard !readsPaused, let bytes = held else { return nil }
        held = nil
        let body = heldBody
        heldBody = 0
        return (bytes, body)
    }

    func dropHeld() {
        held = nil
        heldBody = 0
    }

    func pause() { readsPaused = true }

    /// Reads on again: `deliver` runs after the caller's turn (a handler resumes reads from
    /// inside its own bookkeeping), if something is held.
    func resume(on loop: SocketLoop, _ deliver: @escaping () -> Void) {
        readsPaused = false
        guard held != nil, !deliveryScheduled else { return }
        deliveryScheduled = true
        loop.enqueue { [self] in
            deliveryScheduled = false
            deliver()
        }
    }

    func isWritable(channelWritable: Bool) -> Bool { channelWritable && pending < H2Connection.laneHighWatermark }

    /// A DATA frame of `count` bytes: the promise that tracks it until written, or nil for
    /// the first `H2LaneFlow.untrackedBytes` of a stream (a promise per frame costs more
    /// than a small answer). `changed` runs when the count drops.
    func track(_ count: Int, on loop: SocketLoop, changed: @escaping () -> Void) -> EventLoopPromise<Void>? {
        sent += count
        guard sent > H2LaneFlow.untrackedBytes, count > 0 else { return nil }
        let promise = loop.makePromise(of: Void.self)
        pending += count
        promise.futureResult.assumeIsolatedUnsafeUnchecked().whenComplete { [self] _ in
            pending -= count
            changed()
        }
        return promise
    }
}

@available(*, unavailable)
extension H2FrameOutput: Sendable {}

@available(*, unavailable)
extension H2LaneFlow: Sendable {}
