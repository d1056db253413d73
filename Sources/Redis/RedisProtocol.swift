import CHiredis
import NIOCore

/// A reply from Redis, copied out of hiredis's reply object.
public enum RedisReply: Sendable, Equatable {
    case string([UInt8])
    case status(String)
    case integer(Int64)
    case error(String)
    case array([RedisReply])
    case null

    init(_ r: UnsafePointer<redisReply>) {
        let reply = r.pointee
        switch reply.type {
        case REDIS_REPLY_STRING:
            self = .string(reply.str.map { Array(UnsafeRawBufferPointer(start: $0, count: reply.len)) } ?? [])
        case REDIS_REPLY_STATUS:
            self = .status(reply.str.map { String(decoding: UnsafeRawBufferPointer(start: $0, count: reply.len), as: UTF8.self) } ?? "")
        case REDIS_REPLY_ERROR:
            self = .error(reply.str.map { String(decoding: UnsafeRawBufferPointer(start: $0, count: reply.len), as: UTF8.self) } ?? "")
        case REDIS_REPLY_INTEGER:
            self = .integer(Int64(reply.integer))
        case REDIS_REPLY_ARRAY:
            var items: [RedisReply] = []
            items.reserveCapacity(reply.elements)
            for i in 0..<reply.elements { if let e = reply.element[i] { items.append(RedisReply(e)) } }
            self = .array(items)
        default:
            self = .null
        }
    }

    /// The integer, also from a numeric bulk string.
    public var int: Int64? {
        switch self {
        case .integer(let v): return v
        case .string(let b): return Int64(String(decoding: b, as: UTF8.self))
        default: return nil
        }
    }
}

/// A command's arguments, formatted by hiredis into the RESP bytes sent.
public struct RedisCommand: Sendable {
    private var storage: [UInt8] = []
    private var ends: [Int] = []

    public init(_ args: String...) {
        for a in args { append(a) }
    }

    public mutating func append(_ s: String) {
        storage.append(contentsOf: s.utf8)
        ends.append(storage.count)
    }

    public mutating func append<Bytes: Sequence>(bytes: Bytes) where Bytes.Element == UInt8 {
        storage.append(contentsOf: bytes)
        ends.append(storage.count)
    }

    public mutating func append(bytes: UnsafeRawBufferPointer) {
        storage.append(contentsOf: bytes)
        ends.append(storage.count)
    }

    public var count: Int { ends.count }

    /// The same command with its first two arguments replaced (`EVALSHA sha` → `EVAL source`).
    public mutating func replaceFirst(with first: String, _ second: String) {
        precondition(ends.count >= 2)
        let rest = storage[ends[1]...]
        let shift = ends[1]
        var next = RedisCommand(first, second)
        next.storage.append(contentsOf: rest)
        for end in ends.dropFirst(2) { next.ends.append(end - shift + next.ends[1]) }
        self = next
    }

    /// The slot of the command's first key (Redis Cluster): argument 3 of `EVAL`/`EVALSHA`
    /// with at least one key, else argument 1; slot 0 for a command without arguments.
    public var slot: Int {
        func argument(_ i: Int) -> ArraySlice<UInt8> { storage[(i == 0 ? 0 : ends[i - 1])..<ends[i]] }
        var index = 1
        if ends.count >= 4 {
            let name = argument(0)
            if name.elementsEqual("EVALSHA".utf8) || name.elementsEqual("EVAL".utf8) || name.elementsEqual("evalsha".utf8) || name.elementsEqual("eval".utf8),
                let keys = Int(String(decoding: argument(2), as: UTF8.self)), keys >= 1
            {
                index = 3
            }
        }
        guard index < ends.count else { return 0 }
        return argument(index).withUnsafeBytes { RedisSlot.of($0) }
    }

    /// Calls `body` with the argument count, pointers and lengths, as hiredis takes them.
    func withArgv<R>(_ body: (Int32, UnsafeMutablePointer<UnsafePointer<CChar>?>, UnsafePointer<Int>) -> R) -> R {
        let n = ends.count
        return storage.withUnsafeBufferPointer { raw in
            let base = UnsafeRawPointer(raw.baseAddress ?? UnsafePointer(bitPattern: 1)!).assumingMemoryBound(to: CChar.self)
            var argv: [UnsafePointer<CChar>?] = []
            var lengths: [Int] = []
            argv.reserveCapacity(n)
            lengths.reserveCapacity(n)
            var start = 0
            for end in ends {
                argv.append(base + start)
                lengths.append(end - start)
                start = end
            }
            return argv.withUnsafeMutableBufferPointer { a in
                lengths.withUnsafeBufferPointer { l in body(Int32(n), a.baseAddress!, l.baseAddress!) }
            }
        }
    }

    /// The RESP encoding (`redisFormatCommandArgv`), written into `buffer`.
    public func write(into buffer: inout ByteBuffer) {
        var target: UnsafeMutablePointer<CChar>?
        let length = withArgv { n, argv, lengths in redisFormatCommandArgv(&target, n, argv, lengths) }
        guard length > 0, let target else { return }
        buffer.writeBytes(UnsafeRawBufferPointer(start: target, count: Int(length)))
        redisFreeCommand(target)
    }
}

/// hiredis's reply parser over the bytes a connection reads. Not thread-safe; one per connection.
final class RedisReplyReader {
    private let reader: UnsafeMutablePointer<redisReader>

    init() {
        reader = redisReaderCreate()
    }

    deinit {
        redisReaderFree(reader)
    }

    func feed(_ buffer: ByteBuffer) -> Bool {
        buffer.withUnsafeReadableBytes { p in
            redisReaderFeed(reader, p.baseAddress?.assumingMemoryBound(to: CChar.self), p.count) == REDIS_OK
        }
    }

    /// The next complete reply; nil if more bytes are needed. Throws on a protocol error.
    func next() throws(RedisError) -> RedisReply? {
        var raw: UnsafeMutableRawPointer?
        guard redisReaderGetReply(reader, &raw) == REDIS_OK else {
            throw .protocolError(withUnsafeBytes(of: reader.pointee.errstr) { String(decoding: $0.prefix { $0 != 0 }, as: UTF8.self) })
        }
        guard let raw else { return nil }
        defer { freeReplyObject(raw) }
        return RedisReply(raw.assumingMemoryBound(to: redisReply.self))
    }
}

/// Why a command got no reply.
public enum RedisError: Error, Sendable, Equatable, CustomStringConvertible {
    /// No reply within the command timeout.
    case timeout
    /// Could not connect, or the connection was lost.
    case unavailable(String)
    /// Recent failures opened the circuit: Redis is not tried until it half-opens.
    case circuitOpen
    /// Too many commands waiting for a connection.
    case overloaded
    case protocolError(String)

    public var description: String {
        switch self {
        case .timeout: return "timeout"
        case .unavailable(let why): return "unavailable: \(why)"
        case .circuitOpen: return "circuit open"
        case .overloaded: return "too many commands waiting"
        case .protocolError(let why): return "protocol error: \(why)"
        }
    }

    /// A short code for scripts and logs.
    public var code: String {
        switch self {
        case .timeout: return "redis_timeout"
        case .unavailable: return "redis_unavailable"
        case .circuitOpen: return "redis_circuit_open"
        case .overloaded: return "redis_overloaded"
        case .protocolError: return "redis_error"
        }
    }
}
