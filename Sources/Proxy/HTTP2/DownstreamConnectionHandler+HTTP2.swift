import Config
import NIOCore
import SocketLoop
import TLS

extension DownstreamConnectionHandler {
    /// What an HTTP/2 client sends first (RFC 9113 3.4).
    static let h2Preface = Array("PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".utf8)

    /// Decides, on a connection's first bytes, whether it speaks HTTP/2: ALPN chose `h2` on a
    /// TLS listener, or the bytes open with the preface on an `h2c` one (prior knowledge; an
    /// HTTP/1.1 client there is served as usual). Returns true when the bytes are taken:
    /// the connection is HTTP/2 now, or the preface may still be arriving.
    func becameH2(_ buffer: inout ByteBuffer) -> Bool {
        if let tls = tlsStream {
            mayBecomeH2 = false
            guard tls.negotiatedH2 else { return false }
            becomeH2(buffer)
            return true
        }
        var candidate = buffer
        if var partial = inbound {
            partial.writeBuffer(&candidate)
            candidate = partial
        }
        let n = min(candidate.readableBytes, Self.h2Preface.count)
        let matches = candidate.readableBytesView.prefix(n).elementsEqual(Self.h2Preface.prefix(n))
        guard matches else {
            mayBecomeH2 = false
            if inbound != nil {
                inbound = nil
                buffer = candidate
            }
            return false
        }
        if n < Self.h2Preface.count {
            inbound = candidate
            return true
        }
        inbound = nil
        becomeH2(candidate)
        return true
    }

    /// Hands the connection's stream to a channel of `NIOHTTP2Handler` and ``H2Connection``,
    /// which serve it from now on (this handler is dropped), and gives it `bytes`.
    private func becomeH2(_ bytes: ByteBuffer) {
        mayBecomeH2 = false
        let tls = tlsStream
        guard let stream = io.stream, let loop = worker.socketLoop, let socket = (tls?.lower ?? stream) as? TCPConnection else {
            io.close()
            return
        }
        timer.cancel()
        worker.unregister(self)
        let channel = SocketChannel(adopting: stream, over: socket)
        let connection = H2Connection(worker: worker, listener: listener, loop: loop, tls: tls, remoteAddress: io.remoteAddress)
        io.handOver(to: channel)
        io = .none
        do {
            let pipeline = channel.pipeline.syncOperations
            try pipeline.addHandler(H2Connection.frameHandler(worker.generation.shared.config.limits, delegate: connection))
            try pipeline.addHandler(connection)
            // No read yet: a TLS stream would hand over the plaintext it holds at once,
            // ahead of `bytes`. The stream's own read in progress delivers the rest in order.
            try channel.syncOptions?.setOption(.autoRead, value: false)
            try channel.activate()
        } catch {
            stream.close()
            return
        }
        worker.registerH2(connection)
        channel.streamRead(stream, bytes)
        loop.enqueue { try? channel.syncOptions?.setOption(.autoRead, value: true) }
    }
}
