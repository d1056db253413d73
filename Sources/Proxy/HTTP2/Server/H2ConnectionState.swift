import NIOCore

/// A server connection's own rules of RFC 9113, as a value the ``H2Connection`` asks: which
/// streams a client may open (5.1, 5.1.1, 5.1.2), the connection's windows both ways (6.9),
/// the client's settings (6.5), what is done with frames for streams no lane serves, and the
/// flood limits of ``H2FloodMeter``. The lanes, the socket and the clock stay with the
/// connection; each answer here says what to do, and `H2ConnectionStateTests` checks them
/// without a socket.
struct H2ConnectionState {
    /// What becomes of a header block for a stream no lane serves.
    enum NewStream: Equatable {
        /// A lane serves it.
        case open
        /// RST_STREAM with this code; the connection goes on.
        case refuse(H2ErrorCode)
        /// A late block for a stream this side reset: dropped (after HPACK has read it).
        case drop
        /// GOAWAY with this code.
        case fail(H2ErrorCode)
    }

    /// A stream no lane serves, as a frame for it finds it.
    enum Unserved: Equatable {
        /// Never opened: a frame other than HEADERS or PRIORITY is a connection error.
        case idle
        /// Over; this side reset it lately, so frames the client sent before it knew are dropped.
        case resetByUs
        /// Over otherwise.
        case closed
    }

    let maxConcurrentStreams: Int
    private(set) var lastStreamID: UInt32 = 0
    /// The client has acknowledged this side's SETTINGS (so it knows the stream limit).
    private(set) var settingsAcked = false
    private(set) var peerInitialWindow = 65535
    private(set) var peerMaxFrameSize = H2Wire.defaultMaxFrameSize
    /// What the connection may still send (DATA take from it, WINDOW_UPDATE adds).
    private(set) var sendWindow = 65535
    /// What the client may still send, and what it sent since the window was last topped up.
    private var receiveWindow: Int
    private var receiveCredit = 0
    private let creditThreshold: Int
    /// Streams this side reset lately (RFC 9113 5.4.2).
    private var resetByUs = [UInt32](repeating: 0, count: 32)
    private var resetByUsNext = 0
    /// Streams the client opened lately, to tell a closed stream from a skipped one.
    private var opened = [UInt32](repeating: 0, count: 64)
    private var openedNext = 0
    private var meter: H2FloodMeter

    init(maxConcurrentStreams: Int, receiveWindow: Int, creditThreshold: Int, now: NIODeadline) {
        self.maxConcurrentStreams = maxConcurrentStreams
        self.receiveWindow = receiveWindow
        self.creditThreshold = creditThreshold
        meter = H2FloodMeter(now: now)
    }

    // MARK: streams

    /// A header block for stream `id`, which no lane serves; `open` streams are served now.
    mutating func newStream(_ id: UInt32, open: Int, goingAway: Bool, selfDependent: Bool, now: NIODeadline) -> NewStream {
        guard id & 1 == 1 else { return .fail(.protocolError) }  // clients open odd streams
        guard id > lastStreamID else {
            // A block on a stream that is over: late for one this side reset, a client's error
            // for one it used (STREAM_CLOSED) or skipped (PROTOCOL_ERROR, RFC 9113 5.1.1).
            if resetByUs.contains(id) { return .drop }
            return .fail(opened.contains(id) ? .streamClosed : .protocolError)
        }
        lastStreamID = id
        _ = meter.count(.opened, now: now)
        opened[openedNext] = id
        openedNext = (openedNext + 1) % opened.count
        if selfDependent { return .refuse(.protocolError) }
        if goingAway { return .refuse(.refusedStream) }
        if open >= maxConcurrentStreams {
            // Before the client has our SETTINGS it may not know the limit: refused, and it may
            // try again; after, it is breaking the protocol.
            return settingsAcked ? .fail(.protocolError) : .refuse(.refusedStream)
        }
        return .open
    }

    func unserved(_ id: UInt32) -> Unserved {
        if id > lastStreamID || id & 1 == 0 { return .idle }
        return resetByUs.contains(id) ? .resetByUs : .closed
    }

    mutating func resetSent(_ id: UInt32) {
        resetByUs[resetByUsNext] = id
        resetByUsNext = (resetByUsNext + 1) % resetByUs.count
    }

    // MARK: windows

    /// A DATA frame of `length` flow-controlled bytes, whatever its stream: the connection
    /// window's increment to send back now (given back in large steps), or nil.
    mutating func received(_ length: Int) throws(H2ErrorCode) -> Int? {
        guard length <= receiveWindow else { throw .flowControlError }
        receiveWindow -= length
        receiveCredit += length
        guard receiveCredit >= creditThreshold else { return nil }
        let credit = receiveCredit
        receiveWindow += credit
        receiveCredit = 0
        return credit
    }

    /// WINDOW_UPDATE for the connection.
    mutating func windowUpdated(_ increment: Int) throws(H2ErrorCode) {
        sendWindow += increment
        guard sendWindow <= H2Wire.maxWindow else { throw .flowControlError }
    }

    /// How much of `wanted` bytes of DATA may go now on a stream with `streamWindow` (either
    /// window may be below zero, RFC 9113 6.9.2), in one frame.
    func sendable(_ wanted: Int, streamWindow: Int) -> Int {
        max(0, min(wanted, streamWindow, sendWindow, peerMaxFrameSize))
    }

    /// `n` bytes of DATA went out (a frame).
    mutating func sent(_ n: Int) {
        sendWindow -= n
        if n > 0 { meter.progressed() }
    }

    // MARK: settings

    /// The client's SETTINGS: how much every open stream's send window changes.
    mutating func apply(settings entries: ByteBuffer) throws(H2ErrorCode) -> Int {
        var entries = entries
        var delta = 0
        while let id = entries.readInteger(as: UInt16.self), let value = entries.readInteger(as: UInt32.self) {
            switch id {
            case 0x2:  // ENABLE_PUSH: this side never pushes, but the value must be 0 or 1.
                guard value <= 1 else { throw .protocolError }
            case 0x4:  // INITIAL_WINDOW_SIZE applies to every open stream's window (6.9.2).
                guard value <= UInt32(H2Wire.maxWindow) else { throw .flowControlError }
                delta += Int(value) - peerInitialWindow
                peerInitialWindow = Int(value)
            case 0x5:  // MAX_FRAME_SIZE
                guard value >= UInt32(H2Wire.defaultMaxFrameSize), value <= 0xFF_FFFF else { throw .protocolError }
                peerMaxFrameSize = Int(value)
            default:
                // HEADER_TABLE_SIZE: answers never use the dynamic table; the others are for
                // a client (MAX_CONCURRENT_STREAMS: this side opens none) or advisory.
                break
            }
        }
        return delta
    }

    mutating func settingsAcknowledged() { settingsAcked = true }

    // MARK: floods

    /// Counts a frame that does no work; true past the limits (ENHANCE_YOUR_CALM).
    mutating func count(_ kind: H2FloodMeter.Kind, now: NIODeadline) -> Bool {
        meter.count(kind, now: now)
    }
}
