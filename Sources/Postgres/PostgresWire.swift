import NIOCore

/// PostgreSQL's frontend/backend protocol, version 3 (the messages the control plane needs).
/// https://www.postgresql.org/docs/current/protocol-message-formats.html
enum PostgresWire {
    /// A message from the server.
    enum Backend: Equatable {
        /// `R`: 0 ok, 3 cleartext, 5 MD5 (with a salt), 10 SASL (mechanisms), 11 SASL
        /// continue, 12 SASL final; other codes are methods we do not speak.
        case authentication(code: Int32, data: [UInt8])
        case parameterStatus
        case backendKeyData
        case readyForQuery
        case rowDescription
        case dataRow([String?])
        case commandComplete
        case emptyQueryResponse
        case parseComplete
        case bindComplete
        case noData
        case error(ServerError)
        case notice
        case notification(channel: String, payload: String)
        case other(UInt8)
    }

    /// The fields of an `ErrorResponse` we keep: severity, SQLSTATE, message.
    struct ServerError: Equatable, Sendable {
        var severity = ""
        var sqlState = ""
        var message = ""
    }

    /// The largest message taken from the server: documents are a few megabytes at most.
    static let maxMessageBytes = 64 << 20

    enum DecodeError: Error, Equatable {
        case tooLarge(Int)
        case malformed(UInt8)
    }

    /// One whole message off the front of `buffer`, or nil until one has arrived.
    static func decode(_ buffer: inout ByteBuffer) throws(DecodeError) -> Backend? {
        guard buffer.readableBytes >= 5, let type = buffer.getInteger(at: buffer.readerIndex, as: UInt8.self),
            let length = buffer.getInteger(at: buffer.readerIndex + 1, as: Int32.self)
        else { return nil }
        guard length >= 4, Int(length) <= maxMessageBytes else { throw .tooLarge(Int(length)) }
        guard buffer.readableBytes >= 1 + Int(length) else { return nil }
        buffer.moveReaderIndex(forwardBy: 5)
        guard var body = buffer.readSlice(length: Int(length) - 4) else { return nil }
        guard let message = parse(type, &body) else { throw .malformed(type) }
        return message
    }

    private static func parse(_ type: UInt8, _ body: inout ByteBuffer) -> Backend? {
        switch type {
        case UInt8(ascii: "R"):
            guard let code = body.readInteger(as: Int32.self) else { return nil }
            return .authentication(code: code, data: body.readBytes(length: body.readableBytes) ?? [])
        case UInt8(ascii: "S"): return .parameterStatus
        case UInt8(ascii: "K"): return .backendKeyData
        case UInt8(ascii: "Z"): return .readyForQuery
        case UInt8(ascii: "T"): return .rowDescription
        case UInt8(ascii: "D"):
            guard let count = body.readInteger(as: Int16.self), count >= 0 else { return nil }
            var columns: [String?] = []
            columns.reserveCapacity(Int(count))
            for _ in 0..<count {
                guard let length = body.readInteger(as: Int32.self) else { return nil }
                if length < 0 {
                    columns.append(nil)
                } else {
                    guard let text = body.readString(length: Int(length)) else { return nil }
                    columns.append(text)
                }
            }
            return .dataRow(columns)
        case UInt8(ascii: "C"): return .commandComplete
        case UInt8(ascii: "I"): return .emptyQueryResponse
        case UInt8(ascii: "1"): return .parseComplete
        case UInt8(ascii: "2"): return .bindComplete
        case UInt8(ascii: "n"): return .noData
        case UInt8(ascii: "E"):
            var error = ServerError()
            while let field = body.readInteger(as: UInt8.self), field != 0 {
                guard let value = readCString(&body) else { return nil }
                switch field {
                case UInt8(ascii: "V"): error.severity = value
                case UInt8(ascii: "C"): error.sqlState = value
                case UInt8(ascii: "M"): error.message = value
                default: break
                }
            }
            return .error(error)
        case UInt8(ascii: "N"): return .notice
        case UInt8(ascii: "A"):
            guard body.readInteger(as: Int32.self) != nil, let channel = readCString(&body), let payload = readCString(&body) else { return nil }
            return .notification(channel: channel, payload: payload)
        default: return .other(type)
        }
    }

    static func readCString(_ buffer: inout ByteBuffer) -> String? {
        guard let end = buffer.readableBytesView.firstIndex(of: 0) else { return nil }
        let text = buffer.readString(length: end - buffer.readerIndex)
        buffer.moveReaderIndex(forwardBy: 1)
        return text
    }

    // MARK: Frontend messages

    static func startup(user: String, database: String, into out: inout ByteBuffer) {
        framed(nil, into: &out) { out in
            out.writeInteger(Int32(196_608))  // protocol 3.0
            for (key, value) in [("user", user), ("database", database), ("application_name", "moongate"), ("client_encoding", "UTF8")] {
                writeCString(key, into: &out)
                writeCString(value, into: &out)
            }
            out.writeInteger(UInt8(0))
        }
    }

    /// `p`: a password (cleartext or MD5) or a SASL response.
    static func password(_ bytes: [UInt8], cString: Bool, into out: inout ByteBuffer) {
        framed(UInt8(ascii: "p"), into: &out) { out in
            out.writeBytes(bytes)
            if cString { out.writeInteger(UInt8(0)) }
        }
    }

    static func saslInitialResponse(mechanism: String, _ bytes: [UInt8], into out: inout ByteBuffer) {
        framed(UInt8(ascii: "p"), into: &out) { out in
            writeCString(mechanism, into: &out)
            out.writeInteger(Int32(bytes.count))
            out.writeBytes(bytes)
        }
    }

    /// `Q`: one or more statements without parameters.
    static func simpleQuery(_ sql: String, into out: inout ByteBuffer) {
        framed(UInt8(ascii: "Q"), into: &out) { writeCString(sql, into: &$0) }
    }

    /// Parse, Bind (parameters as text), Execute and Sync: one statement with parameters,
    /// answered on its own (an error skips to this Sync, not past it).
    static func extendedQuery(_ sql: String, _ parameters: [String?], into out: inout ByteBuffer) {
        framed(UInt8(ascii: "P"), into: &out) { out in
            writeCString("", into: &out)
            writeCString(sql, into: &out)
            out.writeInteger(Int16(0))
        }
        framed(UInt8(ascii: "B"), into: &out) { out in
            writeCString("", into: &out)
            writeCString("", into: &out)
            out.writeInteger(Int16(0))  // every parameter in text
            out.writeInteger(Int16(parameters.count))
            for parameter in parameters {
                if let parameter {
                    out.writeInteger(Int32(parameter.utf8.count))
                    out.writeString(parameter)
                } else {
                    out.writeInteger(Int32(-1))
                }
            }
            out.writeInteger(Int16(0))  // every column in text
        }
        framed(UInt8(ascii: "E"), into: &out) { out in
            writeCString("", into: &out)
            out.writeInteger(Int32(0))
        }
        framed(UInt8(ascii: "S"), into: &out) { _ in }
    }

    static func terminate(into out: inout ByteBuffer) {
        framed(UInt8(ascii: "X"), into: &out) { _ in }
    }

    private static func framed(_ type: UInt8?, into out: inout ByteBuffer, _ body: (inout ByteBuffer) -> Void) {
        if let type { out.writeInteger(type) }
        let lengthAt = out.writerIndex
        out.writeInteger(Int32(0))
        body(&out)
        out.setInteger(Int32(out.writerIndex - lengthAt), at: lengthAt)
    }

    private static func writeCString(_ s: String, into out: inout ByteBuffer) {
        // A NUL inside would end the string early and shift every field after it.
        out.writeString(s.contains("\0") ? s.replacing("\0", with: "") : s)
        out.writeInteger(UInt8(0))
    }
}
