// Hot path: every frame a client sends or receives is read or written with these.
import NIOCore

/// HTTP/2 frame types, flags and error codes (RFC 9113 6, 7) as the server side's own frame
/// layer uses them.
enum H2Wire {
    static let data: UInt8 = 0x0
    static let headers: UInt8 = 0x1
    static let priority: UInt8 = 0x2
    static let rstStream: UInt8 = 0x3
    static let settings: UInt8 = 0x4
    static let pushPromise: UInt8 = 0x5
    static let ping: UInt8 = 0x6
    static let goAway: UInt8 = 0x7
    static let windowUpdate: UInt8 = 0x8
    static let continuation: UInt8 = 0x9

    static let endStream: UInt8 = 0x1
    static let ack: UInt8 = 0x1
    static let endHeaders: UInt8 = 0x4
    static let padded: UInt8 = 0x8
    static let priorityFlag: UInt8 = 0x20

    static let headerSize = 9
    /// The frame size every peer accepts without asking (RFC 9113 4.2), and our own limit.
    static let defaultMaxFrameSize = 16384
    static let maxWindow = Int(Int32.max)

    /// Writes a frame header: 24-bit length, type, flags, 31-bit stream.
    @inline(__always)
    static func writeHeader(_ out: inout ByteBuffer, length: Int, type: UInt8, flags: UInt8, stream: UInt32) {
        // One write of nine bytes (three integer writes each check and grow the buffer).
        let id = stream & 0x7FFF_FFFF
        out.writeWithUnsafeMutableBytes(minimumWritableBytes: headerSize) { p in
            p[0] = UInt8(truncatingIfNeeded: length >> 16)
            p[1] = UInt8(truncatingIfNeeded: length >> 8)
            p[2] = UInt8(truncatingIfNeeded: length)
            p[3] = type
            p[4] = flags
            p[5] = UInt8(truncatingIfNeeded: id >> 24)
            p[6] = UInt8(truncatingIfNeeded: id >> 16)
            p[7] = UInt8(truncatingIfNeeded: id >> 8)
            p[8] = UInt8(truncatingIfNeeded: id)
            return headerSize
        }
    }
}

/// RFC 9113 7.
enum H2ErrorCode: UInt32, Error {
    case noError = 0x0
    case protocolError = 0x1
    case internalError = 0x2
    case flowControlError = 0x3
    case settingsTimeout = 0x4
    case streamClosed = 0x5
    case frameSizeError = 0x6
    case refusedStream = 0x7
    case cancel = 0x8
    case compressionError = 0x9
    case connectError = 0xa
    case enhanceYourCalm = 0xb
    case inadequateSecurity = 0xc
    case http11Required = 0xd
}
