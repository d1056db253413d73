import NIOCore
import Config

/// A protocol switch: after the upstream's `101` the client connection and the upstream
/// connection become a `Tunnel`, which takes both streams over. The handler keeps the request
/// open and writes its access-log line when the tunnel ends.
extension DownstreamConnectionHandler: Tunnel.Owner {
    /// Sends the `101` head on, then hands both connections to a tunnel: `rest` (upstream bytes
    /// after the head) and client bytes already read go through it first.
    func startTunnel(_ head: ByteBuffer, _ rest: inout ByteBuffer) {
        guard let upstream = exchange.attempt.upstream, let route = exchange.route else {
            upstreamFailed(.switchedProtocols)
            return
        }
        tryAnswered(status: 101)
        lifecycle.responseHeadSent()
        sendToClient(makeClientHead(head, framing: .none))
        lifecycle.tunnelStarted()
        timer.cancel()
        // The policy's log phase runs now, and its Lua state goes back: a tunnel may last hours.
        if exchange.policy.used {
            exchange.policy.end(completed: true)
            exchange.policy.requestHead = nil
        }
        exchange.attempt.upstream = nil
        let upstreamIO = upstream.leaveForTunnel()
        let clientIO = io
        guard let upstreamStream = upstreamIO.stream, let clientStream = clientIO.stream else {
            upstreamIO.close()
            forceClose()
            return
        }
        let toUpstream = inbound
        inbound = nil
        let toClient = rest.readableBytes > 0 ? rest : nil
        rest.moveReaderIndex(to: rest.writerIndex)
        io = .none
        let tunnel = Tunnel(
            client: clientStream, upstream: upstreamStream, owner: self, worker: worker, route: route.name,
            idleTimeout: TimeAmount((exchange.generation?.shared ?? worker.generation.shared).config.timeouts.tunnelIdle))
        self.tunnel = tunnel
        tunnel.start(
            clientDelegate: { clientIO.handOver(to: $0) }, upstreamDelegate: { upstreamIO.handOver(to: $0) },
            toUpstream: toUpstream, toClient: toClient)
    }

    func tunnelEnded(up: Int, down: Int) {
        tunnel = nil
        exchange.record.bytesSent &+= down
        exchange.requestBodyBytes &+= up
        endExchange(completed: true)
        if lifecycle.clientClosed() { worker.unregister(self) }
    }
}
