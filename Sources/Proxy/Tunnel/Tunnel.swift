import NIOCore
import SocketLoop
import Telemetry

/// Drives a `TunnelStateMachine` over two streams: the client's connection and the upstream
/// connection that answered `101`. It is the delegate of both from the switch on; the client
/// connection's handler waits for `ended` to write the request's access-log line.
final class Tunnel {
    /// What the tunnel tells the client connection it came from.
    protocol Owner: AnyObject {
        /// The tunnel is over: `up` bytes went from the client to the upstream, `down` back.
        func tunnelEnded(up: Int, down: Int)
    }

    private var machine: TunnelStateMachine
    private let client: any ByteStream
    private let upstream: any ByteStream
    private weak var owner: Owner?
    private let worker: ProxyWorker
    private var timer = ConnectionTimer()
    /// Bytes each way; `counted` is what metrics have been told of.
    private(set) var up = 0
    private(set) var down = 0
    private var counted = (up: 0, down: 0)
    private let upLabels: [String]
    private let downLabels: [String]
    private let routeLabels: [String]
    /// Metrics hear of the bytes at least this often (and when the tunnel ends).
    static let countEvery = TimeAmount.seconds(5)

    private final class Side: ByteStreamDelegate {
        unowned let tunnel: Tunnel
        let side: TunnelStateMachine.Side
        init(_ tunnel: Tunnel, _ side: TunnelStateMachine.Side) {
            self.tunnel = tunnel
            self.side = side
        }
        func streamRead(_ stream: ByteStream, _ bytes: ByteBuffer) { tunnel.read(bytes, from: side) }
        func streamReadComplete(_ stream: ByteStream) { tunnel.flush(side.other) }
        func streamWritabilityChanged(_ stream: ByteStream) { tunnel.writabilityChanged(side, stream.isWritable) }
        func streamClosed(_ stream: ByteStream, error: SocketError?) { tunnel.closed(side) }
    }

    init(client: any ByteStream, upstream: any ByteStream, owner: Owner, worker: ProxyWorker, route: String, idleTimeout: TimeAmount) {
        self.client = client
        self.upstream = upstream
        self.owner = owner
        self.worker = worker
        self.machine = TunnelStateMachine(now: worker.clock.now(), idleTimeout: idleTimeout)
        routeLabels = [route]
        upLabels = [route, "upstream"]
        downLabels = [route, "downstream"]
    }

    /// Takes both streams over: `toUpstream` (client bytes that came after the request head)
    /// and `toClient` (upstream bytes after the `101` head) go first.
    func start(clientDelegate: (ByteStreamDelegate) -> Void, upstreamDelegate: (ByteStreamDelegate) -> Void, toUpstream: ByteBuffer?, toClient: ByteBuffer?) {
        // Each stream holds its side (its delegate); the owner holds the tunnel until it ends.
        clientDelegate(Side(self, .client))
        upstreamDelegate(Side(self, .upstream))
        worker.metrics.add(BuiltinFamilies.tunnelsOpen, routeLabels, 1)
        if let toClient, toClient.readableBytes > 0 { read(toClient, from: .upstream) }
        if let toUpstream, toUpstream.readableBytes > 0 { read(toUpstream, from: .client) }
        flush(.client)
        flush(.upstream)
        client.resumeReads()
        upstream.resumeReads()
        armTimer(at: min(machine.lastActivity + machine.idleTimeout, worker.clock.now() + Self.countEvery))
    }

    private func stream(_ side: TunnelStateMachine.Side) -> any ByteStream { side == .client ? client : upstream }

    private func read(_ bytes: ByteBuffer, from side: TunnelStateMachine.Side) {
        switch machine.read(from: side, now: worker.clock.now()) {
        case .forward(let to):
            if side == .client { up &+= bytes.readableBytes } else { down &+= bytes.readableBytes }
            let target = stream(to)
            target.write(bytes, promise: nil)
            if !target.isWritable { apply(machine.writability(of: to, writable: false)) }
        case .drop:
            break
        }
    }

    private func flush(_ side: TunnelStateMachine.Side) { stream(side).flush() }

    private func writabilityChanged(_ side: TunnelStateMachine.Side, _ writable: Bool) {
        apply(machine.writability(of: side, writable: writable))
    }

    private func apply(_ action: TunnelStateMachine.FlowAction) {
        switch action {
        case .pauseReads(let side): stream(side).pauseReads()
        case .resumeReads(let side): stream(side).resumeReads()
        case .nothing: break
        }
    }

    private func closed(_ side: TunnelStateMachine.Side) {
        switch machine.closed(side) {
        case .closeAfterFlush(let other):
            stream(other).closeAfterFlush()
        case .ended:
            end()
        case .nothing:
            break
        }
    }

    /// Closes both sides now (shutdown past the drain timeout, or the client connection's end).
    func close() {
        guard machine.closeNow() else { return }
        client.close()
        upstream.close()
    }

    private func end() {
        timer.cancel()
        countBytes()
        worker.metrics.add(BuiltinFamilies.tunnelsOpen, routeLabels, -1)
        let owner = self.owner
        self.owner = nil
        owner?.tunnelEnded(up: up, down: down)
    }

    private func countBytes() {
        if up > counted.up { worker.metrics.add(BuiltinFamilies.tunnelBytes, upLabels, Double(up - counted.up)) }
        if down > counted.down { worker.metrics.add(BuiltinFamilies.tunnelBytes, downLabels, Double(down - counted.down)) }
        counted = (up, down)
    }

    private func armTimer(at deadline: NIODeadline) {
        timer.arm(at: deadline, loop: worker.eventLoop, socketLoop: worker.socketLoop) { [self] in
            timer.fired()
            timerFired()
        }
    }

    private func timerFired() {
        countBytes()
        let now = worker.clock.now()
        switch machine.timerFired(now: now) {
        case .close:
            close()
        case .rearm(let deadline):
            armTimer(at: min(deadline, now + Self.countEvery))
        case .nothing:
            break
        }
    }
}

@available(*, unavailable)
extension Tunnel: Sendable {}
