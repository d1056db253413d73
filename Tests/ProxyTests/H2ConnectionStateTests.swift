import NIOCore
import Testing

@testable import Proxy

/// The server connection's protocol rules on their own (RFC 9113 5.1, 6.5, 6.9): which
/// streams open, what frames for streams no lane serves mean, the windows and the settings.
@Suite struct H2ConnectionStateTests {
    static let now = NIODeadline.uptimeNanoseconds(1_000_000_000)

    static func state(maxStreams: Int = 2) -> H2ConnectionState {
        H2ConnectionState(maxConcurrentStreams: maxStreams, receiveWindow: 1000, creditThreshold: 500, now: now)
    }

    @Test func streamsOpenInOrderAndWithinTheLimit() {
        var s = Self.state()
        #expect(s.newStream(2, open: 0, goingAway: false, selfDependent: false, now: Self.now) == .fail(.protocolError))
        #expect(s.newStream(1, open: 0, goingAway: false, selfDependent: false, now: Self.now) == .open)
        #expect(s.newStream(5, open: 1, goingAway: false, selfDependent: false, now: Self.now) == .open)
        // Lower than the last: one skipped (RFC 9113 5.1.1), or one used and over (5.1).
        #expect(s.newStream(3, open: 2, goingAway: false, selfDependent: false, now: Self.now) == .fail(.protocolError))
        #expect(s.newStream(1, open: 1, goingAway: false, selfDependent: false, now: Self.now) == .fail(.streamClosed))
        // Past the limit: refused while the client may not know it, fatal once it does.
        #expect(s.newStream(7, open: 2, goingAway: false, selfDependent: false, now: Self.now) == .refuse(.refusedStream))
        s.settingsAcknowledged()
        #expect(s.newStream(9, open: 2, goingAway: false, selfDependent: false, now: Self.now) == .fail(.protocolError))
        #expect(s.newStream(11, open: 0, goingAway: false, selfDependent: true, now: Self.now) == .refuse(.protocolError))
        #expect(s.newStream(13, open: 0, goingAway: true, selfDependent: false, now: Self.now) == .refuse(.refusedStream))
        #expect(s.lastStreamID == 13)
    }

    @Test func framesForStreamsNoLaneServes() {
        var s = Self.state()
        _ = s.newStream(5, open: 0, goingAway: false, selfDependent: false, now: Self.now)
        #expect(s.unserved(7) == .idle)
        #expect(s.unserved(4) == .idle)
        #expect(s.unserved(5) == .closed)
        s.resetSent(5)
        #expect(s.unserved(5) == .resetByUs)
        // A late block for a stream this side reset is read and dropped, not fatal.
        #expect(s.newStream(5, open: 0, goingAway: false, selfDependent: false, now: Self.now) == .drop)
    }

    @Test func theConnectionWindowsBothWays() throws {
        var s = Self.state()
        #expect(try s.received(400) == nil)
        #expect(try s.received(200) == 600)  // past the threshold: given back at once
        #expect(throws: H2ErrorCode.flowControlError) { try s.received(1001) }
        var t = Self.state()
        #expect(t.sendable(100_000, streamWindow: 1_000_000) == 16384)  // one frame at most
        #expect(t.sendable(10, streamWindow: -5) == 0)
        t.sent(65535)
        #expect(t.sendable(10, streamWindow: 100) == 0)
        try t.windowUpdated(10)
        #expect(t.sendable(100, streamWindow: 100) == 10)
        #expect(throws: H2ErrorCode.flowControlError) { try t.windowUpdated(Int(Int32.max)) }
    }

    static func settings(_ pairs: [(UInt16, UInt32)]) -> ByteBuffer {
        var b = ByteBuffer()
        for (id, value) in pairs {
            b.writeInteger(id)
            b.writeInteger(value)
        }
        return b
    }

    @Test func settingsChangeTheWindowsAndFramesOrEndTheConnection() throws {
        var s = Self.state()
        #expect(try s.apply(settings: Self.settings([(0x4, 1000), (0x5, 32768), (0x1, 0), (0x99, 7)])) == 1000 - 65535)
        #expect(s.peerInitialWindow == 1000 && s.peerMaxFrameSize == 32768)
        #expect(try s.apply(settings: Self.settings([(0x4, 3000)])) == 2000)
        #expect(throws: H2ErrorCode.protocolError) { try s.apply(settings: Self.settings([(0x2, 2)])) }
        #expect(throws: H2ErrorCode.flowControlError) { try s.apply(settings: Self.settings([(0x4, 1 << 31)])) }
        #expect(throws: H2ErrorCode.protocolError) { try s.apply(settings: Self.settings([(0x5, 100)])) }
        #expect(throws: H2ErrorCode.protocolError) { try s.apply(settings: Self.settings([(0x5, 1 << 24)])) }
    }

    @Test func floodsAreCountedOnTheGivenClock() {
        var s = Self.state()
        var over = false
        for _ in 0...H2FloodMeter.maxControl { over = s.count(.control, now: Self.now) }
        #expect(over)
        // A PING for each DATA frame sent (gRPC's bandwidth probes) never adds up to a flood.
        var t = Self.state()
        for _ in 0..<(3 * H2FloodMeter.maxControl) {
            let over = t.count(.control, now: Self.now)
            #expect(!over)
            t.sent(1000)
        }
    }
}
