// Hot path: every HTTP/2 request's frames are read and written here.
import Config
import NIOCore
import NIOHPACK
import SocketLoop
import TLS

/// One client's HTTP/2 connection, read and written by our own frame layer straight on the
/// socket (or TLS stream): ``H2FrameDecoder`` cuts frames, NIOHPACK's decoder reads header
/// blocks, this applies them to the streams (RFC 9113 5: stream states, flow control both
/// ways, settings, the defences of ``H2FloodMeter``), and each stream is served by an
/// ``H2Lane`` and the ordinary `DownstreamConnectionHandler` behind it, on the connection's loop.
///
/// Why not swift-nio-http2's `NIOHTTP2Handler` (the first version used it, and the upstream
/// side still does): its frames, stream state machines, Huffman-coded HPACK output and the
/// channel pipeline around it measured at over half of an HTTP/2 request's instructions
/// (callgrind, README "HTTP/2"), which left the gateway at 0.58x nginx on the h2 scenario.
///
/// Errors: a connection error sends GOAWAY with its code and closes once it is out (nothing
/// more is read); a stream error resets that stream only.
final class H2Connection: ByteStreamDelegate {
    /// A stream's window comes back once the handler has taken this much of its body.
    static let streamCreditThreshold = 32 * 1024
    /// The connection's receive window (raised from 64 KB at the start, so one stream's
    /// upload does not wait for round trips) and the amount taken before it is topped up.
    static let connectionWindow = 1 << 20
    static let connectionCreditThreshold = 512 * 1024
    /// The stream window this side advertises (the protocol's default).
    static let streamWindow = 65535
    /// A lane reports itself unwritable past this many bytes waiting for the client's window.
    static let laneHighWatermark = 128 * 1024
    /// The handler's response heads are its own; these bound them all the same.
    static let maxResponseHead = 64 * 1024
    static let responseHeadLimits = HeadLimits(maxHeaderBytes: maxResponseHead, maxHeaderCount: 1000, maxURIBytes: maxResponseHead)
    static func decodedBlockLimit(_ limits: Limits) -> Int { max(4 * limits.maxHeaderBytes, 64 * 1024) }
    /// Payloads up to this size are copied into the frame buffer; larger ones go out as
    /// their own buffer (one more iovec rather than a copy).
    private static let copiedPayload = 2048

    let worker: ProxyWorker
    let listener: ListenerHandle
    let tls: TLSStream?
    let loop: SocketLoop
    let allocator = ByteBufferAllocator()
    let remoteAddress: SocketAddress?
    private var io: ConnectionIO
    /// The connection-wide protocol rules: streams, windows, settings, floods.
    private var state: H2ConnectionState

    // Reading.
    private var decoder: H2FrameDecoder
    private var hpack: HPACKDecoder
    /// A frame's first bytes, waiting for the rest.
    private var partial: ByteBuffer?
    private var reading = false

    // Streams.
    /// The lanes serving open streams (few: a linear search beats hashing at these counts).
    private var streams: [H2Lane] = []
    private var idle: [H2Lane] = []
    /// Lanes whose answer waits for window, in the order they blocked.
    private var blocked: [H2Lane] = []
    /// Lanes whose request head waits for the rest of this read (see `H2Lane.begin`).
    private var gathering: [H2Lane] = []

    // Writing.
    private var out: ByteBuffer
    private var flushScheduled = false
    private(set) var socketWritable = true

    // Ending.
    private(set) var goingAway = false
    private var closed = false
    private var timer = ConnectionTimer()
    private var lastActivity: NIODeadline

    init(worker: ProxyWorker, listener: ListenerHandle, loop: SocketLoop, io: ConnectionIO, tls: TLSStream?, remoteAddress: SocketAddress?) {
        self.worker = worker
        self.listener = listener
        self.loop = loop
        self.io = io
        self.tls = tls
        self.remoteAddress = remoteAddress
        let limits = worker.generation.shared.config.limits
        // SETTINGS_MAX_HEADER_LIST_SIZE says `max_header_bytes`, but a larger block is still
        // decoded, up to `decodedBlockLimit`, so that the dynamic table stays in step and the
        // request gets the 431 an HTTP/1.1 one would (from the handler's own parser) on a
        // connection that goes on; past that it is a bomb. A block's compressed size is at
        // most about its decoded one.
        let decodedLimit = Self.decodedBlockLimit(limits)
        decoder = H2FrameDecoder(maxBlockBytes: decodedLimit + H2Wire.defaultMaxFrameSize)
        hpack = HPACKDecoder(allocator: ByteBufferAllocator(), maxDynamicTableSize: HPACKDecoder.maxDynamicTableSize, maxHeaderListSize: decodedLimit)
        let now = worker.clock.now()
        lastActivity = now
        state = H2ConnectionState(
            maxConcurrentStreams: limits.maxConcurrentStreams, receiveWindow: Self.connectionWindow,
            creditThreshold: Self.connectionCreditThreshold, now: now)
        out = ByteBufferAllocator().buffer(capacity: 4096)
    }

    /// Sends this side's SETTINGS (RFC 9113 3.4) and takes over the stream, then reads `bytes`.
    func start(_ bytes: ByteBuffer) {
        let limits = worker.generation.shared.config.limits
        let settings: [(UInt16, Int)] = [
            (0x3, limits.maxConcurrentStreams),
            (0x4, Self.streamWindow),
            (0x5, H2Wire.defaultMaxFrameSize),
            (0x6, limits.maxHeaderBytes),
        ]
        H2Wire.writeHeader(&out, length: settings.count * 6, type: H2Wire.settings, flags: 0, stream: 0)
        for (id, value) in settings {
            out.writeInteger(id)
            out.writeInteger(UInt32(value))
        }
        writeWindowUpdate(0, Self.connectionWindow - 65535)
        guard let stream = io.stream else { return }
        io.handOver(to: self)
        armTimer()
        streamRead(stream, bytes)
        streamReadComplete(stream)
    }

    /// Streams in progress whose handler holds an exchange, for tests.
    var exchangesInUse: Int {
        streams.reduce(0) { $0 + ((($1.delegate as? DownstreamConnectionHandler)?.exchange.isVacant ?? true) ? 0 : 1) }
    }

    // MARK: reading

    func streamRead(_ stream: any ByteStream, _ bytes: ByteBuffer) {
        guard !closed, !goingAwayForError else { return }
        reading = true
        lastActivity = worker.clock.now()
        var bytes = bytes
        if var held = partial {
            partial = nil
            held.writeBuffer(&bytes)
            bytes = held
        }
        while !goingAwayForError {
            do {
                guard let frame = try decoder.next(&bytes) else { break }
                handle(frame)
            } catch {
                switch error {
                case .connection(let code): fail(code)
                // The frame is consumed; the frames after it in this read are served.
                case .stream(let id, let code): resetStream(id, code)
                }
            }
        }
        if bytes.readableBytes > 0, !goingAwayForError {
            // Copied: the loop's receive buffer is not held across reads.
            var held = allocator.buffer(capacity: max(bytes.readableBytes, 1024))
            held.writeBuffer(&bytes)
            partial = held
        }
    }

    func streamReadComplete(_ stream: any ByteStream) {
        if !gathering.isEmpty {
            let lanes = gathering
            gathering.removeAll(keepingCapacity: true)
            for lane in lanes { lane.endGathering() }
        }
        reading = false
        flushNow()
    }

    /// While the socket is full nothing more is read from the client: its next requests
    /// would only add answers to a queue it is not taking (measured before this: a client
    /// sending 5000 requests and reading nothing grew the gateway by 133 MB).
    func streamWritabilityChanged(_ stream: any ByteStream) {
        socketWritable = stream.isWritable
        if !goingAwayForError { io.setReading(socketWritable) }
        for lane in streams { lane.writabilityMayHaveChanged() }
    }

    func streamClosed(_ stream: any ByteStream, error: SocketError?) {
        closed = true
        io = .none
        timer.cancel()
        worker.unregisterH2(self)
        let lanes = streams + idle
        streams = []
        idle = []
        blocked = []
        gathering = []
        for lane in lanes { lane.connectionClosed() }
    }

    private func handle(_ frame: H2FrameDecoder.Frame) {
        switch frame {
        case .headers(let id, var block, let endStream, let dependsOn):
            // Every block goes through the decoder, whatever becomes of its stream: the
            // dynamic table must stay in step with the client's.
            let headers: HPACKHeaders
            do {
                headers = try hpack.decodeHeaders(from: &block)
            } catch {
                fail(.compressionError)
                return
            }
            headersReceived(id, headers, endStream: endStream, selfDependent: dependsOn == id)
        case .data(let id, let payload, let flowControlled, let endStream):
            dataReceived(id, payload, flowControlled: flowControlled, endStream: endStream)
        case .priority(let id, let dependsOn):
            if count(.control) { return }
            if dependsOn == id { resetStream(id, .protocolError) }
        case .rstStream(let id, _):
            if let lane = lane(id) {
                let answered = lane.isAnswered
                forget(stream: lane)
                lane.streamReset()
                if !answered, count(.reset) { return }
            } else if state.unserved(id) == .idle {
                fail(.protocolError)
            }
        case .settings(let entries):
            if count(.control) { return }
            applySettings(entries)
        case .settingsAck:
            state.settingsAcknowledged()
        case .ping(let opaque):
            if count(.control) { return }
            H2Wire.writeHeader(&out, length: 8, type: H2Wire.ping, flags: H2Wire.ack, stream: 0)
            out.writeInteger(opaque)
        case .goAway:
            // The client starts nothing more: what is in flight finishes, then the connection ends.
            drain()
        case .windowUpdate(let id, let increment):
            windowUpdated(id, increment)
        case .ignored:
            _ = count(.control)
        }
    }

    /// Counts a frame that does no work; true (and the connection failing) past the limits.
    private func count(_ kind: H2FloodMeter.Kind) -> Bool {
        guard state.count(kind, now: lastActivity) else { return false }
        fail(.enhanceYourCalm)
        return true
    }

    private func headersReceived(_ id: UInt32, _ headers: HPACKHeaders, endStream: Bool, selfDependent: Bool) {
        if let lane = lane(id) {
            // A second block on an open stream: trailers, which must end it (RFC 9113 8.1).
            // Trailers carry no pseudo-fields (RFC 9113 8.1).
            if selfDependent || !endStream || headers.contains(where: { $0.name.utf8.first == UInt8(ascii: ":") }) {
                lane.reset(.protocolError)
            } else if lane.requestEnded {
                lane.reset(.streamClosed)
            } else {
                lane.receiveTrailers()
            }
            return
        }
        switch state.newStream(id, open: streams.count, goingAway: goingAway, selfDependent: selfDependent, now: lastActivity) {
        case .fail(let code):
            fail(code)
            return
        case .drop:
            return
        case .refuse(let code):
            resetStream(id, code)
            return
        case .open:
            break
        }
        let lane = idle.popLast() ?? makeLane()
        streams.append(lane)
        if let refused = lane.begin(id, headers: headers, endStream: endStream, sendWindow: state.peerInitialWindow) {
            forget(stream: lane)
            idle.append(lane)
            resetStream(id, refused)
        }
    }

    private func dataReceived(_ id: UInt32, _ payload: ByteBuffer, flowControlled: Int, endStream: Bool) {
        // The connection's window counts every DATA, whatever becomes of its stream.
        do {
            if let credit = try state.received(flowControlled) { writeWindowUpdate(0, credit) }
        } catch {
            fail(error)
            return
        }
        guard let lane = lane(id) else {
            switch state.unserved(id) {
            case .idle: fail(.protocolError)
            case .closed: resetStream(id, .streamClosed)
            case .resetByUs: break
            }
            return
        }
        if lane.requestEnded {
            lane.reset(.streamClosed)
            return
        }
        guard lane.takeReceiveWindow(flowControlled) else {
            lane.reset(.flowControlError)
            return
        }
        if payload.readableBytes == 0, !endStream, count(.empty) { return }
        lane.receive(payload, flowControlled: flowControlled, endStream: endStream)
    }

    private func applySettings(_ entries: ByteBuffer) {
        let delta: Int
        do {
            delta = try state.apply(settings: entries)
        } catch {
            return fail(error)
        }
        if delta != 0 {
            for lane in streams {
                guard lane.growSendWindow(delta) else { return fail(.flowControlError) }
            }
        }
        H2Wire.writeHeader(&out, length: 0, type: H2Wire.settings, flags: H2Wire.ack, stream: 0)
        if delta > 0 { sendBlocked() }
    }

    private func windowUpdated(_ id: UInt32, _ increment: Int) {
        if id == 0 {
            do {
                try state.windowUpdated(increment)
            } catch {
                return fail(error)
            }
            sendBlocked()
            return
        }
        guard let lane = lane(id) else {
            if state.unserved(id) == .idle { fail(.protocolError) }
            return
        }
        guard lane.growSendWindow(increment) else {
            lane.reset(.flowControlError)
            return
        }
        if lane.output.isBlocked { sendBlocked() }
    }

    private func lane(_ id: UInt32) -> H2Lane? {
        for lane in streams where lane.streamID == id { return lane }
        return nil
    }

    private func makeLane() -> H2Lane {
        let lane = H2Lane(connection: self)
        let handler = DownstreamConnectionHandler(worker: worker, listener: listener)
        lane.delegate = handler
        handler.attach(.h2(lane), register: false)
        return lane
    }

    func gather(_ lane: H2Lane) { gathering.append(lane) }

    private func forget(stream lane: H2Lane) {
        if let i = streams.firstIndex(where: { $0 === lane }) { streams.remove(at: i) }
        if let i = blocked.firstIndex(where: { $0 === lane }) { blocked.remove(at: i) }
    }

    /// A lane's stream is over; a `reusable` lane waits for the next.
    func laneFinished(_ lane: H2Lane, reusable: Bool = true) {
        forget(stream: lane)
        if reusable, !closed {
            if goingAway {
                loop.enqueue { lane.close(error: nil) }
            } else {
                idle.append(lane)
            }
        }
        if goingAway, streams.isEmpty { closeAfterFlush() }
    }

    /// A lane closed: it serves nothing more.
    func laneClosed(_ lane: H2Lane) {
        if let i = idle.firstIndex(where: { $0 === lane }) { idle.remove(at: i) }
    }

    // MARK: writing

    /// A header block as HEADERS and as many CONTINUATION frames as the client's frame size needs.
    func writeHeaders(_ id: UInt32, block: ByteBuffer, endStream: Bool) {
        var block = block
        var type = H2Wire.headers
        var flags = endStream ? H2Wire.endStream : 0
        repeat {
            let n = min(block.readableBytes, state.peerMaxFrameSize)
            let last = n == block.readableBytes
            H2Wire.writeHeader(&out, length: n, type: type, flags: flags | (last ? H2Wire.endHeaders : 0), stream: id)
            var part = block.readSlice(length: n)!
            out.writeBuffer(&part)
            type = H2Wire.continuation
            flags = 0
        } while block.readableBytes > 0
        requestFlush()
    }

    /// DATA for `lane`'s stream, as far as the windows allow; the rest waits for WINDOW_UPDATE.
    func writeData(_ lane: H2Lane, _ bytes: ByteBuffer, end: Bool) {
        guard let id = lane.streamID else { return }
        if lane.output.isBlocked {
            lane.output.queue(bytes, end: end)
        } else {
            var bytes = bytes
            if !sendData(lane, id, &bytes, end: end) {
                lane.output.queue(bytes, end: end)
                blocked.append(lane)
            }
        }
        requestFlush()
    }

    /// Trailers after the stream's DATA (queued behind them when those wait for window).
    func writeTrailers(_ lane: H2Lane, block: ByteBuffer) {
        guard let id = lane.streamID else { return }
        if lane.output.isBlocked {
            lane.output.trailers = block
        } else {
            writeHeaders(id, block: block, endStream: true)
        }
    }

    /// Sends what the windows allow of `bytes`; true when all of it (and the end) went.
    private func sendData(_ lane: H2Lane, _ id: UInt32, _ bytes: inout ByteBuffer, end: Bool) -> Bool {
        while true {
            let n = state.sendable(bytes.readableBytes, streamWindow: lane.output.sendWindow)
            if n == 0, bytes.readableBytes > 0 { return false }
            var payload = bytes.readSlice(length: n)!
            let last = bytes.readableBytes == 0
            lane.output.sendWindow -= n
            state.sent(n)
            H2Wire.writeHeader(&out, length: n, type: H2Wire.data, flags: end && last ? H2Wire.endStream : 0, stream: id)
            if n <= Self.copiedPayload {
                out.writeBuffer(&payload)
            } else {
                io.write(out)
                io.write(payload)
                out = allocator.buffer(capacity: 4096)
            }
            if last { return true }
        }
    }

    /// Sends what waits for window, oldest first, as far as the windows now allow.
    private func sendBlocked() {
        var i = 0
        while i < blocked.count, state.sendWindow > 0 {
            let lane = blocked[i]
            guard let id = lane.streamID, var bytes = lane.output.queued else {
                blocked.remove(at: i)
                continue
            }
            let end = lane.output.queuedEnd
            let done = sendData(lane, id, &bytes, end: end)
            if !done {
                lane.output.queued = bytes
                i += 1
                lane.writabilityMayHaveChanged()
                continue
            }
            blocked.remove(at: i)
            let trailers = lane.output.trailers
            lane.output.clear()
            if let trailers { writeHeaders(id, block: trailers, endStream: true) }
            lane.outputSent()
        }
        requestFlush()
    }

    /// Ends one stream from this side (RFC 9113 6.4) and remembers it for late frames.
    func resetStream(_ id: UInt32, _ code: H2ErrorCode) {
        if let lane = lane(id) {
            lane.reset(code)
            return
        }
        writeReset(id, code)
    }

    func writeReset(_ id: UInt32, _ code: H2ErrorCode) {
        H2Wire.writeHeader(&out, length: 4, type: H2Wire.rstStream, flags: 0, stream: id)
        out.writeInteger(code.rawValue)
        state.resetSent(id)
        requestFlush()
    }

    func writeWindowUpdate(_ id: UInt32, _ increment: Int) {
        H2Wire.writeHeader(&out, length: 4, type: H2Wire.windowUpdate, flags: 0, stream: id)
        out.writeInteger(UInt32(increment))
        requestFlush()
    }

    /// Writes are flushed once per read, or once per loop turn for what other events produce
    /// (answers arriving from upstreams), for every stream together.
    func requestFlush() {
        guard !reading, !flushScheduled, !closed else { return }
        flushScheduled = true
        loop.enqueue { [self] in
            flushScheduled = false
            flushNow()
        }
    }

    private func flushNow() {
        guard !closed else { return }
        if out.readableBytes > 0 {
            io.write(out)
            out = allocator.buffer(capacity: 4096)
        }
        io.flush()
    }

    func enqueue(_ task: @escaping () -> Void) { loop.enqueue(task) }

    // MARK: ending

    private var goingAwayForError = false

    /// A connection error: GOAWAY with `code`, nothing more read, closed once it is out.
    private func fail(_ code: H2ErrorCode) {
        guard !goingAwayForError, !closed else { return }
        goingAwayForError = true
        goingAway = true
        writeGoAway(code)
        io.setReading(false)
        partial = nil
        closeAfterFlush()
    }

    private func writeGoAway(_ code: H2ErrorCode) {
        H2Wire.writeHeader(&out, length: 8, type: H2Wire.goAway, flags: 0, stream: 0)
        out.writeInteger(state.lastStreamID)
        out.writeInteger(code.rawValue)
    }

    /// Graceful end (shutdown, a listener removed, the client's GOAWAY): `GOAWAY` naming the
    /// last stream started; streams in flight finish, new ones are refused, and the
    /// connection closes after the last.
    func drain() {
        guard !goingAway, !closed else { return }
        goingAway = true
        writeGoAway(.noError)
        let waiting = idle
        idle = []
        for lane in waiting { lane.close(error: nil) }
        if streams.isEmpty { closeAfterFlush() } else { requestFlush() }
    }

    /// Closes now (the drain timeout passed).
    func forceClose() {
        guard !closed else { return }
        io.close()
    }

    private func closeAfterFlush() {
        guard !closed else { return }
        flushNow()
        io.closeAfterFlush()
    }

    // MARK: idle timeout

    private func armTimer() {
        let deadline = lastActivity + worker.generation.shared.clientIdleTimeout
        timer.arm(at: deadline, loop: worker.eventLoop, socketLoop: loop) { [self] in
            timer.fired()
            timerFired()
        }
    }

    /// With no request in progress and nothing heard for the idle timeout, the connection
    /// ends with `GOAWAY` (RFC 9113 9.1: the client learns no stream was lost). Streams whose
    /// answer only waits for the client's window do not keep it open.
    private func timerFired() {
        guard !closed else { return }
        let now = worker.clock.now()
        let busy = streams.contains { !$0.isAnswered }
        if !busy, now - lastActivity >= worker.generation.shared.clientIdleTimeout {
            if streams.isEmpty {
                drain()
            } else {
                io.close()
            }
            return
        }
        if busy { lastActivity = max(lastActivity, now) }
        armTimer()
    }
}

@available(*, unavailable)
extension H2Connection: Sendable {}
