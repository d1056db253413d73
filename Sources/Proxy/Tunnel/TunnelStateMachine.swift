import NIOCore

/// A tunnel between a client and an upstream after a protocol switch (`101`): bytes both
/// ways, each side read only while the other can take more, an idle timeout, and a close on
/// either side ending both. A value: the driver (`Tunnel`) reports events and carries out
/// the actions, so every move is tested without sockets (`TunnelStateMachineTests`).
struct TunnelStateMachine {
    enum Side: Equatable {
        case client
        case upstream

        var other: Side { self == .client ? .upstream : .client }
    }

    enum State: Equatable {
        case open
        /// A side closed (or shutdown closes both): the rest get what is queued, then close.
        case closing
        /// Both sides are closed.
        case closed
    }

    private(set) var state = State.open
    private var closedSides: (client: Bool, upstream: Bool) = (false, false)
    /// Reads from each side are paused because the other side cannot take more.
    private(set) var paused: (client: Bool, upstream: Bool) = (false, false)
    private(set) var lastActivity: NIODeadline
    let idleTimeout: TimeAmount

    init(now: NIODeadline, idleTimeout: TimeAmount) {
        lastActivity = now
        self.idleTimeout = idleTimeout
    }

    enum ReadAction: Equatable {
        /// Write the bytes to the other side.
        case forward(to: Side)
        /// The tunnel is ending: drop them.
        case drop
    }

    mutating func read(from side: Side, now: NIODeadline) -> ReadAction {
        guard state == .open else { return .drop }
        lastActivity = now
        return .forward(to: side.other)
    }

    enum FlowAction: Equatable {
        case pauseReads(Side)
        case resumeReads(Side)
        case nothing
    }

    /// Whether `side` can take more (after a write to it, or when it says so): its peer's
    /// reads pause or resume to match.
    mutating func writability(of side: Side, writable: Bool) -> FlowAction {
        guard state == .open else { return .nothing }
        let reader = side.other
        let isPaused = reader == .client ? paused.client : paused.upstream
        guard isPaused == writable else { return .nothing }
        if reader == .client { paused.client = !writable } else { paused.upstream = !writable }
        return writable ? .resumeReads(reader) : .pauseReads(reader)
    }

    enum CloseAction: Equatable {
        /// Send what is queued to the side, then close it.
        case closeAfterFlush(Side)
        /// Both sides are closed: the tunnel has ended.
        case ended
        case nothing
    }

    /// `side` closed (the peer left, or an error).
    mutating func closed(_ side: Side) -> CloseAction {
        if side == .client { closedSides.client = true } else { closedSides.upstream = true }
        switch state {
        case .closed:
            return .nothing
        case .open, .closing:
            if closedSides.client && closedSides.upstream {
                state = .closed
                return .ended
            }
            guard state == .open else { return .nothing }
            state = .closing
            return .closeAfterFlush(side.other)
        }
    }

    enum TimerAction: Equatable {
        /// Nothing came either way for the idle timeout: close both.
        case close
        /// Look again at this deadline.
        case rearm(NIODeadline)
        case nothing
    }

    func timerFired(now: NIODeadline) -> TimerAction {
        guard state == .open else { return .nothing }
        let deadline = lastActivity + idleTimeout
        return now >= deadline ? .close : .rearm(deadline)
    }

    /// Shutdown or an error: both sides close at once.
    mutating func closeNow() -> Bool {
        guard state != .closed else { return false }
        state = .closing
        return true
    }
}
