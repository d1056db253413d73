import NIOCore
import Testing

@testable import Proxy

/// Every move of a tunnel without sockets: bytes forwarded each way, back-pressure, a close on
/// one side ending the other after its queue, idle time, shutdown.
@Suite struct TunnelStateMachineTests {
    let start = NIODeadline.uptimeNanoseconds(1_000_000_000)

    @Test func bytesGoToTheOtherSideAndCountAsActivity() {
        var m = TunnelStateMachine(now: start, idleTimeout: .seconds(10))
        #expect(m.read(from: .client, now: start + .seconds(1)) == .forward(to: .upstream))
        #expect(m.read(from: .upstream, now: start + .seconds(4)) == .forward(to: .client))
        #expect(m.timerFired(now: start + .seconds(5)) == .rearm(start + .seconds(14)))
        #expect(m.timerFired(now: start + .seconds(14)) == .close)
    }

    @Test func aFullSidePausesItsPeersReadsUntilItDrains() {
        var m = TunnelStateMachine(now: start, idleTimeout: .seconds(10))
        #expect(m.writability(of: .client, writable: false) == .pauseReads(.upstream))
        #expect(m.writability(of: .client, writable: false) == .nothing)
        #expect(m.writability(of: .upstream, writable: false) == .pauseReads(.client))
        #expect(m.writability(of: .client, writable: true) == .resumeReads(.upstream))
        #expect(m.writability(of: .client, writable: true) == .nothing)
        #expect(m.paused.client && !m.paused.upstream)
    }

    @Test func aCloseOnEitherSideClosesTheOtherAfterItsQueue() {
        for side in [TunnelStateMachine.Side.client, .upstream] {
            var m = TunnelStateMachine(now: start, idleTimeout: .seconds(10))
            #expect(m.closed(side) == .closeAfterFlush(side.other))
            // Bytes still arriving from the other side are dropped; the timer has nothing to do.
            #expect(m.read(from: side.other, now: start) == .drop)
            #expect(m.timerFired(now: start + .seconds(60)) == .nothing)
            #expect(m.closed(side) == .nothing)
            #expect(m.closed(side.other) == .ended)
            #expect(m.state == .closed)
        }
    }

    @Test func shutdownClosesBothAndEndsWhenBothHaveClosed() {
        var m = TunnelStateMachine(now: start, idleTimeout: .seconds(10))
        let first = m.closeNow()
        #expect(first)
        #expect(m.closed(.upstream) == .nothing)
        #expect(m.closed(.client) == .ended)
        let again = m.closeNow()
        #expect(!again)
    }
}
