import Config

/// Redis Cluster's key slots: which of the 16,384 slots a key hashes to, and which primary
/// serves each slot.
public enum RedisSlot {
    public static let count = 16384

    /// The slot of `key`: CRC16 (XMODEM) of the key, or of its hash tag, the part between
    /// the first `{` and the next `}` when that part is not empty, modulo 16,384 (the
    /// cluster specification's `HASH_SLOT`).
    public static func of(_ key: UnsafeRawBufferPointer) -> Int {
        var hashed = key
        if let open = key.firstIndex(of: UInt8(ascii: "{")) {
            let rest = key[(open + 1)...]
            if let close = rest.firstIndex(of: UInt8(ascii: "}")), close > open + 1 {
                hashed = UnsafeRawBufferPointer(rebasing: key[(open + 1)..<close])
            }
        }
        return Int(crc16(hashed)) & (count - 1)
    }

    public static func of(_ key: [UInt8]) -> Int { key.withUnsafeBytes { of($0) } }

    /// CRC-16/XMODEM (polynomial 0x1021, initial 0), a byte at a time from a table.
    public static func crc16(_ bytes: UnsafeRawBufferPointer) -> UInt16 {
        var crc: UInt16 = 0
        for byte in bytes {
            crc = (crc << 8) ^ table[Int(UInt8(truncatingIfNeeded: crc >> 8) ^ byte)]
        }
        return crc
    }

    private static let table: [UInt16] = (0..<256).map { i in
        var c = UInt16(i) << 8
        for _ in 0..<8 { c = c & 0x8000 != 0 ? (c << 1) ^ 0x1021 : c << 1 }
        return c
    }
}

/// Which node serves each slot, as `CLUSTER SLOTS` last said (and `MOVED` since).
public struct RedisSlotMap: Sendable, Equatable {
    /// Node addresses, indexed by `owner`.
    public private(set) var nodes: [SocketAddressSpec] = []
    /// Per slot, an index into `nodes`, or -1 when no node is known for it.
    private var owner = [Int16](repeating: -1, count: RedisSlot.count)

    public init() {}

    /// The node serving `slot`, if known.
    public func node(for slot: Int) -> SocketAddressSpec? {
        nodeIndex(for: slot).map { nodes[$0] }
    }

    /// The index in `nodes` of the node serving `slot`, if known. Indices stay valid while
    /// slots are reassigned (`assign` only appends nodes).
    public func nodeIndex(for slot: Int) -> Int? {
        let i = owner[slot]
        return i < 0 ? nil : Int(i)
    }

    /// Whether any slot has a node.
    public var isEmpty: Bool { nodes.isEmpty }

    /// Records that `node` serves `slot` (a `MOVED` answer).
    public mutating func assign(_ slot: Int, to node: SocketAddressSpec) {
        owner[slot] = index(of: node)
    }

    private mutating func index(of node: SocketAddressSpec) -> Int16 {
        if let i = nodes.firstIndex(of: node) { return Int16(i) }
        nodes.append(node)
        return Int16(nodes.count - 1)
    }

    /// The map a `CLUSTER SLOTS` reply describes: `[[start, end, [host, port, id...], replicas...]...]`.
    /// An empty host means the node that was asked (`asked`). Nil if the reply is not of that shape.
    public static func parse(_ reply: RedisReply, asked: SocketAddressSpec) -> RedisSlotMap? {
        guard case .array(let ranges) = reply else { return nil }
        var map = RedisSlotMap()
        for range in ranges {
            guard case .array(let fields) = range, fields.count >= 3,
                let start = fields[0].int, let end = fields[1].int, start >= 0, end >= start, end < RedisSlot.count,
                case .array(let primary) = fields[2], primary.count >= 2, let port = primary[1].int, port > 0, port < 65536
            else { return nil }
            let host: String
            switch primary[0] {
            case .string(let bytes): host = String(decoding: bytes, as: UTF8.self)
            case .status(let text): host = text
            default: return nil
            }
            let address = SocketAddressSpec(host: host.isEmpty || host == "?" ? asked.host : host, port: Int(port))
            let i = map.index(of: address)
            for slot in Int(start)...Int(end) { map.owner[slot] = i }
        }
        return map
    }
}

/// A cluster's redirection, from an error reply: `MOVED slot host:port` (the slot has moved
/// for good) or `ASK slot host:port` (this one command goes there, after `ASKING`).
public enum RedisRedirect: Equatable, Sendable {
    case moved(slot: Int, to: SocketAddressSpec)
    case ask(slot: Int, to: SocketAddressSpec)

    public init?(_ message: String) {
        let parts = message.split(separator: " ")
        guard parts.count == 3, let slot = Int(parts[1]), slot >= 0, slot < RedisSlot.count,
            let colon = parts[2].lastIndex(of: ":"), let port = Int(parts[2][parts[2].index(after: colon)...]), port > 0, port < 65536
        else { return nil }
        // Redis writes an IPv6 node as `::1:6380`, without brackets: the port is after the last colon.
        var host = parts[2][..<colon]
        if host.hasPrefix("["), host.hasSuffix("]") { host = host.dropFirst().dropLast() }
        let address = SocketAddressSpec(host: String(host), port: port)
        switch parts[0] {
        case "MOVED": self = .moved(slot: slot, to: address)
        case "ASK": self = .ask(slot: slot, to: address)
        default: return nil
        }
    }
}
