import NIOCore

/// Counts the work a client makes its connection do for no request (RFC 9113 10.5): streams
/// it opens and cancels at once (CVE-2023-44487, rapid reset), frames that must be answered
/// or read but carry nothing (SETTINGS, PING, PRIORITY, DATA with no bytes and no end,
/// frames of unknown types). Past a limit within `window` the connection ends with GOAWAY
/// ENHANCE_YOUR_CALM. The limits are far above what a real client does: a browser or a gRPC
/// channel sends a handful of SETTINGS and PINGs a minute, and cancels some of its streams
/// (deadlines, navigation) but not nearly all of them.
struct H2FloodMeter {
    enum Kind {
        /// A stream the client opened.
        case opened
        /// A stream the client reset before its answer was complete.
        case reset
        /// SETTINGS, PING (both answered), PRIORITY, unknown frames.
        case control
        /// DATA with no bytes that does not end its stream.
        case empty
    }

    static let window = TimeAmount.seconds(10)
    /// Resets count once past 200 in the window, and then only when they are over three
    /// quarters of the streams opened in it (Envoy closes past half after 100 streams; a
    /// gRPC client whose calls time out half the time cancels half its streams, an attack
    /// nearly all).
    static let maxResets = 200
    static let maxControl = 1000
    static let maxEmpty = 1000

    private var windowStart: NIODeadline
    private var resets = 0
    private var opened = 0
    private var control = 0
    private var empty = 0

    init(now: NIODeadline) {
        windowStart = now
    }

    /// A DATA frame went out: one control frame is paid for. gRPC clients measure the
    /// bandwidth-delay product with a PING per window of DATA they receive (grpc-go's BDP
    /// estimator), which on a fast link is many a second; those are answers to our progress,
    /// not a flood, and a flood of PINGs alone still meets the limit.
    mutating func progressed() {
        if control > 0 { control -= 1 }
    }

    /// Counts one; true when the client is past a limit.
    mutating func count(_ kind: Kind, now: NIODeadline) -> Bool {
        if now - windowStart >= Self.window {
            windowStart = now
            resets = 0
            opened = 0
            control = 0
            empty = 0
        }
        switch kind {
        case .opened:
            opened += 1
            return false
        case .reset:
            resets += 1
            return resets > Self.maxResets && resets * 4 > opened * 3
        case .control:
            control += 1
            return control > Self.maxControl
        case .empty:
            empty += 1
            return empty > Self.maxEmpty
        }
    }
}
