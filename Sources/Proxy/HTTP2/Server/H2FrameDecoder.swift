// Hot path: every frame a client sends is cut out here.
import NIOCore

/// A client's bytes cut into frames (RFC 9113 4, 6): the connection preface, frame sizes,
/// padding, header blocks put back together from their CONTINUATION frames, and each frame's
/// own shape (lengths, stream zero or not). What a frame means for the streams is the
/// connection's business (``H2StreamTable``).
///
/// Why our own rather than swift-nio-http2's: its frames come through a channel pipeline as
/// `HTTP2Frame` values after its stream state machines have run, which measured (callgrind,
/// README "HTTP/2") at over half of an HTTP/2 request's instructions; this is one pass over
/// the bytes, with slices of the read buffer and no allocation per frame.
struct H2FrameDecoder {
    enum Frame {
        case headers(stream: UInt32, block: ByteBuffer, endStream: Bool, dependsOn: UInt32?)
        /// `flowControlled` counts the padding too (RFC 9113 6.1), as the windows do.
        case data(stream: UInt32, payload: ByteBuffer, flowControlled: Int, endStream: Bool)
        case priority(stream: UInt32, dependsOn: UInt32)
        case rstStream(stream: UInt32, code: UInt32)
        /// The settings' 6-byte entries.
        case settings(ByteBuffer)
        case settingsAck
        case ping(UInt64)
        case goAway(lastStream: UInt32, code: UInt32)
        case windowUpdate(stream: UInt32, increment: Int)
        /// A frame of a type this side ignores (RFC 9113 5.5).
        case ignored
    }

    enum Failure: Error, Equatable {
        /// The connection ends with GOAWAY and this code.
        case connection(H2ErrorCode)
        /// Only this stream is reset.
        case stream(UInt32, H2ErrorCode)
    }

    static let preface = Array("PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".utf8)

    private enum Phase {
        case preface(matched: Int)
        case firstFrame
        case frames
    }

    /// A header block waiting for its CONTINUATION frames.
    private struct Pending {
        var stream: UInt32
        var endStream: Bool
        var dependsOn: UInt32?
        var block: ByteBuffer
        var frames: Int
    }

    private var phase = Phase.preface(matched: 0)
    private var pending: Pending?
    /// The largest frame this side accepts (what it advertised).
    let maxFrameSize: Int
    /// Bounds a header block across its frames (CVE-2024-27316: a block that never ends):
    /// past either, the connection ends with ENHANCE_YOUR_CALM.
    let maxBlockBytes: Int
    static let maxBlockFrames = 128

    init(maxFrameSize: Int = H2Wire.defaultMaxFrameSize, maxBlockBytes: Int) {
        self.maxFrameSize = maxFrameSize
        self.maxBlockBytes = maxBlockBytes
    }

    /// The next whole frame in `buffer` (its bytes consumed), or nil when more must come.
    mutating func next(_ buffer: inout ByteBuffer) throws(Failure) -> Frame? {
        while true {
            switch phase {
            case .preface(let matched):
                let n = min(buffer.readableBytes, Self.preface.count - matched)
                let same = buffer.withUnsafeReadableBytes { p in
                    (0..<n).allSatisfy { p[$0] == Self.preface[matched + $0] }
                }
                guard same else { throw .connection(.protocolError) }
                buffer.moveReaderIndex(forwardBy: n)
                guard matched + n == Self.preface.count else {
                    phase = .preface(matched: matched + n)
                    return nil
                }
                phase = .firstFrame
                continue
            case .firstFrame, .frames:
                break
            }
            guard buffer.readableBytes >= H2Wire.headerSize else { return nil }
            let start = buffer.readerIndex
            let word = buffer.getInteger(at: start, as: UInt32.self)!
            let length = Int(word >> 8)
            let type = UInt8(truncatingIfNeeded: word)
            let flags = buffer.getInteger(at: start + 4, as: UInt8.self)!
            let stream = buffer.getInteger(at: start + 5, as: UInt32.self)! & 0x7FFF_FFFF
            // RFC 9113 4.2: a frame larger than advertised ends the connection (checked before
            // its bytes arrive, so nothing past the limit is ever buffered).
            guard length <= maxFrameSize else { throw .connection(.frameSizeError) }
            guard buffer.readableBytes >= H2Wire.headerSize + length else { return nil }
            if case .firstFrame = phase {
                // RFC 9113 3.4: the preface ends with a SETTINGS frame.
                guard type == H2Wire.settings, flags & H2Wire.ack == 0 else { throw .connection(.protocolError) }
                phase = .frames
            }
            buffer.moveReaderIndex(forwardBy: H2Wire.headerSize)
            var payload = buffer.readSlice(length: length)!
            if let frame = try decode(type, flags, stream, &payload) { return frame }
        }
    }

    private mutating func decode(_ type: UInt8, _ flags: UInt8, _ stream: UInt32, _ payload: inout ByteBuffer) throws(Failure) -> Frame? {
        if var block = pending {
            // RFC 9113 6.10: nothing may come between a block's frames.
            guard type == H2Wire.continuation, stream == block.stream else { throw .connection(.protocolError) }
            block.frames += 1
            guard block.block.readableBytes + payload.readableBytes <= maxBlockBytes, block.frames <= Self.maxBlockFrames else {
                throw .connection(.enhanceYourCalm)
            }
            block.block.writeBuffer(&payload)
            guard flags & H2Wire.endHeaders != 0 else {
                pending = block
                return nil
            }
            pending = nil
            return .headers(stream: block.stream, block: block.block, endStream: block.endStream, dependsOn: block.dependsOn)
        }
        switch type {
        case H2Wire.data:
            guard stream != 0 else { throw .connection(.protocolError) }
            let length = payload.readableBytes
            try Self.unpad(flags, &payload)
            return .data(stream: stream, payload: payload, flowControlled: length, endStream: flags & H2Wire.endStream != 0)
        case H2Wire.headers:
            guard stream != 0 else { throw .connection(.protocolError) }
            try Self.unpad(flags, &payload)
            var dependsOn: UInt32?
            if flags & H2Wire.priorityFlag != 0 {
                guard let word = payload.readInteger(as: UInt32.self), payload.readInteger(as: UInt8.self) != nil else {
                    throw .connection(.frameSizeError)
                }
                dependsOn = word & 0x7FFF_FFFF
            }
            let endStream = flags & H2Wire.endStream != 0
            guard flags & H2Wire.endHeaders != 0 else {
                guard payload.readableBytes <= maxBlockBytes else { throw .connection(.enhanceYourCalm) }
                // Copied: the read buffer is not held across reads.
                var block = ByteBuffer()
                block.reserveCapacity(payload.readableBytes * 2)
                block.writeBuffer(&payload)
                pending = Pending(stream: stream, endStream: endStream, dependsOn: dependsOn, block: block, frames: 1)
                return nil
            }
            return .headers(stream: stream, block: payload, endStream: endStream, dependsOn: dependsOn)
        case H2Wire.priority:
            guard stream != 0 else { throw .connection(.protocolError) }
            guard payload.readableBytes == 5 else { throw .stream(stream, .frameSizeError) }
            return .priority(stream: stream, dependsOn: payload.readInteger(as: UInt32.self)! & 0x7FFF_FFFF)
        case H2Wire.rstStream:
            guard stream != 0 else { throw .connection(.protocolError) }
            guard payload.readableBytes == 4 else { throw .connection(.frameSizeError) }
            return .rstStream(stream: stream, code: payload.readInteger()!)
        case H2Wire.settings:
            guard stream == 0 else { throw .connection(.protocolError) }
            if flags & H2Wire.ack != 0 {
                guard payload.readableBytes == 0 else { throw .connection(.frameSizeError) }
                return .settingsAck
            }
            guard payload.readableBytes % 6 == 0 else { throw .connection(.frameSizeError) }
            return .settings(payload)
        case H2Wire.pushPromise:
            // RFC 9113 8.4: clients never push.
            throw .connection(.protocolError)
        case H2Wire.ping:
            guard stream == 0 else { throw .connection(.protocolError) }
            guard payload.readableBytes == 8 else { throw .connection(.frameSizeError) }
            // A PING's ACK is one we asked for: this side never asks, so it means nothing.
            if flags & H2Wire.ack != 0 { return .ignored }
            return .ping(payload.readInteger()!)
        case H2Wire.goAway:
            guard stream == 0 else { throw .connection(.protocolError) }
            guard payload.readableBytes >= 8 else { throw .connection(.frameSizeError) }
            let last = payload.readInteger(as: UInt32.self)! & 0x7FFF_FFFF
            return .goAway(lastStream: last, code: payload.readInteger()!)
        case H2Wire.windowUpdate:
            guard payload.readableBytes == 4 else { throw .connection(.frameSizeError) }
            let increment = Int(payload.readInteger(as: UInt32.self)! & 0x7FFF_FFFF)
            guard increment > 0 else {
                throw stream == 0 ? .connection(.protocolError) : .stream(stream, .protocolError)
            }
            return .windowUpdate(stream: stream, increment: increment)
        case H2Wire.continuation:
            // A CONTINUATION with no block open.
            throw .connection(.protocolError)
        default:
            return .ignored
        }
    }

    /// Drops a padded frame's padding (RFC 9113 6.1): padding as long as the frame is an error.
    private static func unpad(_ flags: UInt8, _ payload: inout ByteBuffer) throws(Failure) {
        guard flags & H2Wire.padded != 0 else { return }
        guard let pad = payload.readInteger(as: UInt8.self), Int(pad) <= payload.readableBytes else {
            throw .connection(.protocolError)
        }
        payload.moveWriterIndex(to: payload.writerIndex - Int(pad))
    }
}
