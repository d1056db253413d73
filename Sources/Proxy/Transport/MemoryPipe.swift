import NIOCore
import SocketLoop

/// Two ends of an in-memory connection on one loop, for `moongate test`: what one end writes
/// and flushes, the other reads on the loop's next turn, as from a socket. An end with a
/// delegate (a proxy handler) is told of bytes, writability and the close; an end without
/// one (the test's side) keeps what it received in `received`.
///
/// Its calls are kept out of line (`@inline(never)`): `ConnectionIO` switches between a socket
/// and a pipe on every write, and inlining the pipe's side there made the socket's path too
/// large to inline into the handlers (callgrind: +0.6% instructions a proxied request).
final class MemoryPipe {
    final class End: ByteStream {
        let loop: EventLoop
        let remoteAddress: SocketAddress?
        /// The other end; nil once both ends are closed.
        fileprivate var peer: End?
        var delegate: ByteStreamDelegate?
        /// What the other end sent, for an end without a delegate.
        private(set) var received = ByteBuffer()
        private(set) var isOpen = true
        /// The other end closed (or this one did).
        private(set) var peerClosed = false
        let isWritable = true
        private var unflushed: [ByteBuffer] = []
        private var reading = true
        /// Bytes that came while reading is paused.
        private var held: [ByteBuffer] = []

        fileprivate init(loop: EventLoop, remoteAddress: SocketAddress?) {
            self.loop = loop
            self.remoteAddress = remoteAddress
        }

        @inline(never)
        func write(_ bytes: ByteBuffer, promise: EventLoopPromise<Void>?) {
            guard isOpen else {
                promise?.fail(ChannelError.ioOnClosedChannel)
                return
            }
            unflushed.append(bytes)
            promise?.succeed()
        }

        @inline(never)
        func flush() {
            guard isOpen, !unflushed.isEmpty, let peer else { return }
            let batch = unflushed
            unflushed.removeAll()
            loop.assumeIsolatedUnsafeUnchecked().execute { peer.arrived(batch) }
        }

        @inline(never)
        func close(error: SocketError?) {
            guard isOpen else { return }
            isOpen = false
            unflushed.removeAll()
            let peer = self.peer
            loop.assumeIsolatedUnsafeUnchecked().execute { [self] in
                peer?.otherEndClosed()
                closedHere()
            }
        }

        @inline(never)
        func closeAfterFlush(lingering: TimeAmount?, maxDrained: Int) {
            flush()
            close()
        }

        @inline(never)
        func pauseReads() { reading = false }

        @inline(never)
        func resumeReads() {
            guard !reading else { return }
            reading = true
            if !held.isEmpty {
                let batch = held
                held.removeAll()
                arrived(batch)
            }
        }

        /// The test's side: takes what arrived so far.
        func takeReceived() -> ByteBuffer {
            defer { received.clear() }
            return received
        }

        private func arrived(_ batch: [ByteBuffer]) {
            guard isOpen else { return }
            guard let delegate else {
                for var bytes in batch { received.writeBuffer(&bytes) }
                return
            }
            guard reading else {
                held.append(contentsOf: batch)
                return
            }
            for bytes in batch where isOpen { delegate.streamRead(self, bytes) }
            if isOpen { delegate.streamReadComplete(self) }
        }

        private func otherEndClosed() {
            peerClosed = true
            guard isOpen else { return }
            // Bytes still held are dropped, as a socket's unread bytes are at a reset.
            isOpen = false
            closedHere()
        }

        private func closedHere() {
            peerClosed = true
            let delegate = self.delegate
            self.delegate = nil
            peer = nil
            delegate?.streamClosed(self, error: nil)
        }
    }

    /// A connected pair: `client` is the side that connected (its peer address is the
    /// server's), `server` the side that accepted (its peer address is `clientAddress`).
    static func pair(loop: EventLoop, clientAddress: SocketAddress?, serverAddress: SocketAddress?) -> (client: End, server: End) {
        let client = End(loop: loop, remoteAddress: serverAddress)
        let server = End(loop: loop, remoteAddress: clientAddress)
        client.peer = server
        server.peer = client
        return (client, server)
    }
}

@available(*, unavailable)
extension MemoryPipe.End: Sendable {}
