import Config
import NIOCore
import SocketLoop
import TLS

extension DownstreamConnectionHandler {
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
        let n = min(candidate.readableBytes, H2FrameDecoder.preface.count)
        let matches = candidate.readableBytesView.prefix(n).elementsEqual(H2FrameDecoder.preface.prefix(n))
        guard matches else {
            mayBecomeH2 = false
            if inbound != nil {
                inbound = nil
                buffer = candidate
            }
            return false
        }
        if n < H2FrameDecoder.preface.count {
            inbound = candidate
            return true
        }
        inbound = nil
        becomeH2(candidate)
        return true
    }

    /// Hands the connection's stream to an ``H2Connection``, which serves it from now on
    /// (this handler is dropped), and gives it `bytes`.
    private func becomeH2(_ bytes: ByteBuffer) {
        mayBecomeH2 = false
        guard let loop = worker.socketLoop, io.stream != nil else {
            io.close()
            return
        }
        timer.cancel()
        worker.unregister(self)
        let connection = H2Connection(worker: worker, listener: listener, loop: loop, io: io, tls: tlsStream, remoteAddress: io.remoteAddress)
        io = .none
        worker.registerH2(connection)
        connection.start(bytes)
    }
}
