import CEpoll
import Glibc
import NIOCore

/// A non-blocking TCP socket on a ``SocketLoop``: reads into `ByteBuffer`s, queues writes and
/// sends them with `sendmsg` (a gather write), with NIO's back-pressure contract (not writable above a high
/// watermark of queued bytes until it drains below the low one).
///
/// Loop-bound: create, use and close it on its loop only.
public final class TCPConnection: SocketLoopSource, SocketLoopClosable, ByteStream {
    /// Bytes asked of each `read`.
    static let readSize = 16 * 1024
    /// At most this many reads per readiness event, so one busy peer cannot starve the rest.
    static let readsPerEvent = 4
    static let maxIOVecs = 64

    public let loop: SocketLoop
    public let fd: Int32
    /// The peer, when the system told us.
    public let remoteAddress: SocketAddress?
    /// Whoever handles the bytes; dropped when the connection closes (breaking the cycle with a
    /// delegate that holds the connection).
    public var delegate: ByteStreamDelegate?

    /// Queued bytes above which ``isWritable`` turns false, and below which it turns back.
    public var writeWatermarks = (low: 32 * 1024, high: 64 * 1024)

    public private(set) var isOpen = true
    public private(set) var isWritable = true
    /// Bytes queued and not yet taken by the kernel.
    public private(set) var pendingBytes = 0

    private var registration: SocketLoop.Registration?
    private var pending = CircularBuffer<PendingWrite>(initialCapacity: 4)
    /// Promises of writes the kernel has taken, completed once the queue is consistent again
    /// (a completion may write, flush or close).
    /// Made on the first write with a promise: most connections never have one, and an empty
    /// `CircularBuffer` still holds storage for 16 (about 160 bytes a connection).
    private var written: CircularBuffer<EventLoopPromise<Void>>?
    private var readsPaused = false
    private var waitingForWritable = false
    private var closeWhenFlushed = false
    /// A lingering close in progress (see ``closeAfterFlush(lingering:)``).
    private var lingering: Lingering?
    private var connecting: Connecting?

    /// After the answer is sent and the write side shut, what the peer still sends is read
    /// and dropped until it closes, for a bounded time and number of bytes.
    private struct Lingering {
        var timer: SocketLoop.TimerHandle?
        var bytesLeft: Int
        var draining = false
    }

    private struct PendingWrite {
        var bytes: ByteBuffer
        var promise: EventLoopPromise<Void>?
    }

    private struct Connecting {
        var completion: (Result<TCPConnection, SocketError>) -> Void
        var timer: SocketLoop.TimerHandle?
    }

    init(fd: Int32, remoteAddress: SocketAddress?, loop: SocketLoop) {
        self.fd = fd
        self.remoteAddress = remoteAddress
        self.loop = loop
    }

    deinit {
        if isOpen { Glibc.close(fd) }
    }

    /// Starts reading into `delegate` (an accepted connection waits for this).
    public func start(delegate: ByteStreamDelegate) throws(SocketError) {
        loop.preconditionInEventLoop()
        self.delegate = delegate
        guard registration == nil else { return }
        registration = try loop.register(fd, events: CEPOLL_IN, source: self)
    }

    // MARK: connecting

    /// Connects to `address` on `loop`; `completion` runs on the loop, maybe before this returns.
    public static func connect(
        to address: SocketAddress, on loop: SocketLoop, timeout: TimeAmount,
        _ completion: @escaping (Result<TCPConnection, SocketError>) -> Void
    ) {
        loop.preconditionInEventLoop()
        let family: Int32
        switch address {
        case .v4: family = AF_INET
        case .v6: family = AF_INET6
        default:
            completion(.failure(.system("connect: not an IP address", EAFNOSUPPORT)))
            return
        }
        let fd = cepoll_socket(family)
        guard fd >= 0 else {
            completion(.failure(.system("socket", cepoll_errno())))
            return
        }
        _ = cepoll_set_int(fd, Int32(IPPROTO_TCP), TCP_NODELAY, 1)
        let connection = TCPConnection(fd: fd, remoteAddress: address, loop: loop)
        let rc = address.withSockAddr { Glibc.connect(fd, $0, socklen_t($1)) }
        let e = rc == 0 ? 0 : cepoll_errno()
        if rc != 0, e != EINPROGRESS {
            connection.isOpen = false
            Glibc.close(fd)
            completion(.failure(.system("connect to \(address)", e)))
            return
        }
        do {
            // Writable means connected (or failed: SO_ERROR tells).
            connection.registration = try loop.register(fd, events: rc == 0 ? CEPOLL_IN : CEPOLL_OUT, source: connection)
        } catch {
            connection.isOpen = false
            Glibc.close(fd)
            completion(.failure(error))
            return
        }
        if rc == 0 {
            completion(.success(connection))
            return
        }
        var attempt = Connecting(completion: completion, timer: nil)
        attempt.timer = loop.setTimer(at: .now() + timeout) { [connection] in
            guard connection.connecting != nil else { return }
            connection.connecting?.timer = nil
            connection.connectFinished(.timeout)
        }
        connection.connecting = attempt
    }

    private func connectFinished(_ error: SocketError?) {
        guard let attempt = connecting else { return }
        connecting = nil
        if let timer = attempt.timer { loop.cancelTimer(timer) }
        if let error {
            closeSilently()
            attempt.completion(.failure(error))
            return
        }
        updateInterest()
        attempt.completion(.success(self))
    }

    // MARK: events

    public func ready(events: UInt32) {
        if connecting != nil {
            let e = cepoll_socket_error(fd)
            connectFinished(e == 0 ? nil : .system("connect to \(remoteAddress.map { "\($0)" } ?? "?")", e))
            return
        }
        if events & CEPOLL_OUT != 0, waitingForWritable { flushNow() }
        guard isOpen else { return }
        if lingering?.draining == true {
            if events & (CEPOLL_IN | CEPOLL_HUP | CEPOLL_ERR) != 0 { drain() }
            return
        }
        if events & (CEPOLL_IN | CEPOLL_HUP | CEPOLL_ERR) != 0 {
            if readsPaused {
                // Not reading, yet the peer hung up or failed: waiting would spin (epoll is
                // level-triggered), so the connection ends here.
                if events & (CEPOLL_HUP | CEPOLL_ERR) != 0 {
                    let e = cepoll_socket_error(fd)
                    close(error: e == 0 ? nil : .system("socket", e))
                }
                return
            }
            readNow()
        }
    }

    private func readNow() {
        var delivered = false
        for _ in 0..<Self.readsPerEvent {
            // Moved out, so a buffer nobody kept is uniquely referenced and `clear` reuses it.
            var buffer = loop.receiveBuffer.take() ?? ByteBuffer()
            buffer.clear(minimumCapacity: Self.readSize)
            var result = 0
            var failure: Int32 = 0
            buffer.writeWithUnsafeMutableBytes(minimumWritableBytes: Self.readSize) { p in
                result = Glibc.read(fd, p.baseAddress, p.count)
                if result < 0 { failure = cepoll_errno() }
                return max(result, 0)
            }
            if result > 0 {
                let filled = buffer.writableBytes == 0
                delivered = true
                delegate?.streamRead(self, buffer)
                loop.receiveBuffer = buffer
                guard isOpen, !readsPaused, filled else { break }
                continue
            }
            loop.receiveBuffer = buffer
            if result == 0 {
                if delivered { delegate?.streamReadComplete(self) }
                close(error: nil)
                return
            }
            if failure == EINTR { continue }
            if failure == EAGAIN || failure == EWOULDBLOCK { break }
            if delivered { delegate?.streamReadComplete(self) }
            close(error: .system("read", failure))
            return
        }
        if delivered, isOpen { delegate?.streamReadComplete(self) }
    }

    // MARK: reading control

    /// Stops reading (back-pressure): the kernel's buffers fill and the peer slows down.
    public func pauseReads() {
        guard !readsPaused else { return }
        readsPaused = true
        updateInterest()
    }

    public func resumeReads() {
        guard readsPaused else { return }
        readsPaused = false
        updateInterest()
    }

    private func updateInterest() {
        guard isOpen, let registration else { return }
        var events: UInt32 = 0
        if lingering?.draining == true || (!readsPaused && !closeWhenFlushed) { events |= CEPOLL_IN }
        if waitingForWritable { events |= CEPOLL_OUT }
        loop.reregister(registration, events: events)
    }

    // MARK: writing

    /// Queues `bytes`; nothing is sent before ``flush()``. `promise` succeeds once the kernel
    /// has taken them (and everything queued before), or fails if the connection closes first.
    public func write(_ bytes: ByteBuffer, promise: EventLoopPromise<Void>? = nil) {
        guard isOpen, !closeWhenFlushed else {
            promise?.fail(ChannelError.ioOnClosedChannel)
            return
        }
        if bytes.readableBytes == 0 {
            // Kept in line only to complete after what is queued before it.
            guard let promise else { return }
            if pending.isEmpty {
                promise.succeed()
                return
            }
        }
        pending.append(PendingWrite(bytes: bytes, promise: promise))
        pendingBytes += bytes.readableBytes
        if isWritable, pendingBytes > writeWatermarks.high {
            isWritable = false
            delegate?.streamWritabilityChanged(self)
        }
    }

    /// Sends what is queued, as far as the kernel takes it; the rest goes when it can.
    public func flush() {
        guard isOpen, !waitingForWritable, !pending.isEmpty else { return }
        flushNow()
    }

    public func writeAndFlush(_ bytes: ByteBuffer, promise: EventLoopPromise<Void>? = nil) {
        write(bytes, promise: promise)
        flush()
    }

    private func flushNow() {
        while isOpen, !pending.isEmpty {
            let written = writeQueued()
            if written < 0 {
                let e = cepoll_errno()
                if e == EINTR { continue }
                if e == EAGAIN || e == EWOULDBLOCK {
                    if !waitingForWritable {
                        waitingForWritable = true
                        updateInterest()
                    }
                    return
                }
                close(error: .system("write", e))
                return
            }
            consume(written)
        }
        guard isOpen else { return }
        if waitingForWritable {
            waitingForWritable = false
            updateInterest()
        }
        if closeWhenFlushed {
            if lingering != nil { startDraining() } else { close(error: nil) }
        }
    }

    /// A write to a peer that has gone raises SIGPIPE, whose default action ends the process.
    /// NIO ignores SIGPIPE process-wide when its first socket opens; the gateway may open none,
    /// so every send says so itself.
    private var noSignal: Int32 { Int32(MSG_NOSIGNAL) }

    /// One `send`/`sendmsg` of the queue's head; the byte count or -1.
    private func writeQueued() -> Int {
        let count = min(pending.count, Self.maxIOVecs)
        if count == 1 {
            return pending[pending.startIndex].bytes.withUnsafeReadableBytes { send(fd, $0.baseAddress, $0.count, noSignal) }
        }
        return withUnsafeTemporaryAllocation(of: iovec.self, capacity: count) { vecs in
            var i = 0
            var index = pending.startIndex
            while i < count {
                // The pointers outlive the closures: `pending` holds the buffers, unchanged,
                // until `sendmsg` returns (NIO's PendingWritesManager relies on the same).
                pending[index].bytes.withUnsafeReadableBytes {
                    vecs[i] = iovec(iov_base: UnsafeMutableRawPointer(mutating: $0.baseAddress), iov_len: $0.count)
                }
                i += 1
                index = pending.index(after: index)
            }
            var message = msghdr()
            message.msg_iov = vecs.baseAddress
            message.msg_iovlen = count
            return sendmsg(fd, &message, noSignal)
        }
    }

    private func consume(_ count: Int) {
        var left = count
        pendingBytes -= count
        // Empty entries (promises in line) go as soon as everything before them has.
        while !pending.isEmpty, pending[pending.startIndex].bytes.readableBytes <= left {
            let size = pending[pending.startIndex].bytes.readableBytes
            left -= size
            if let promise = pending.removeFirst().promise {
                if written == nil { written = CircularBuffer(initialCapacity: 4) }
                written!.append(promise)
            }
        }
        if left > 0 { pending[pending.startIndex].bytes.moveReaderIndex(forwardBy: left) }
        if !isWritable, pendingBytes < writeWatermarks.low {
            isWritable = true
            delegate?.streamWritabilityChanged(self)
        }
        while let promise = written?.popFirst() { promise.succeed() }
    }

    // MARK: closing

    /// Closes once what is queued is sent (reading stops now).
    ///
    /// With `lingering`, a close that may leave the peer's bytes unread (a request refused
    /// while it was still arriving) is done as RFC 9112 §9.6 and nginx's lingering close do:
    /// the answer is sent, the write side shut (the peer reads the answer, then the end),
    /// and what the peer still sends is read and dropped until it closes, for at most
    /// `lingering` and `maxDrained` bytes. Closing at once with unread bytes would make the
    /// kernel send a reset, which can destroy the answer before the peer reads it.
    public func closeAfterFlush(lingering: TimeAmount? = nil, maxDrained: Int = 1 << 20) {
        guard isOpen, !closeWhenFlushed else { return }
        closeWhenFlushed = true
        if let lingering {
            self.lingering = Lingering(timer: nil, bytesLeft: maxDrained)
            self.lingering?.timer = loop.setTimer(at: .now() + lingering) { [weak self] in
                self?.lingering?.timer = nil
                self?.close(error: nil)
            }
        }
        if pending.isEmpty {
            if self.lingering != nil { startDraining() } else { close(error: nil) }
            return
        }
        updateInterest()
        if !waitingForWritable { flushNow() }
    }

    private func startDraining() {
        guard isOpen, lingering != nil else { return }
        lingering?.draining = true
        _ = Glibc.shutdown(fd, Int32(SHUT_WR))
        updateInterest()
        drain()
    }

    /// Reads and drops what the peer sends; closes at its end, on an error, or past the cap.
    private func drain() {
        withUnsafeTemporaryAllocation(byteCount: 4096, alignment: 1) { scratch in
            while isOpen, let left = lingering?.bytesLeft {
                let result = Glibc.read(fd, scratch.baseAddress, scratch.count)
                if result > 0 {
                    lingering?.bytesLeft = left - result
                    if left - result <= 0 { close(error: nil) }
                    continue
                }
                let failure = result < 0 ? cepoll_errno() : 0
                if failure == EINTR { continue }
                if failure == EAGAIN || failure == EWOULDBLOCK { return }
                close(error: nil)
            }
        }
    }

    /// Closes now; queued bytes are dropped. The delegate hears of it (once).
    public func close(error: SocketError? = nil) {
        guard isOpen else { return }
        closeSilently()
        let delegate = self.delegate
        self.delegate = nil
        delegate?.streamClosed(self, error: error)
    }

    private func closeSilently() {
        guard isOpen else { return }
        isOpen = false
        if let timer = lingering?.timer { loop.cancelTimer(timer) }
        lingering = nil
        if let registration { loop.close(registration) } else { Glibc.close(fd) }
        registration = nil
        pendingBytes = 0
        while let entry = pending.popFirst() { entry.promise?.fail(ChannelError.ioOnClosedChannel) }
    }

    func closeForShutdown() {
        if connecting != nil {
            connectFinished(.closed)
        } else {
            close(error: .closed)
        }
    }
}
