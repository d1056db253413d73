import NIOCore

/// Header changes a script made, applied when the head is written. Reads made after a change
/// see it.
///
/// Names and values live back to back in one byte store, and each change is a small record
/// pointing into it: a request's edits cost no allocation once the exchange has served one
/// request (both arrays keep their capacity), where an entry per name with arrays of its own
/// cost four allocations per call and a walk of nested arrays to free (measured: 8-12K
/// instructions a request for a four-plugin chain). Changes are few, so lookups are scans.
/// Names are compared ignoring ASCII case and written as the script spelled them.
struct HeaderEdits {
    /// One change: a field to write (`value >= 0`), or a removal; `replaces` drops the
    /// message's own fields of the name (set and remove).
    private struct Field {
        var name: Int32
        var nameCount: Int32
        /// Offset of the value in `storage`, or -1 for a removal.
        var value: Int32
        var valueCount: Int32
        var replaces: Bool
    }

    /// Names and values; bytes from `used` on are spare room (zeroes), so that appending is
    /// a copy into place, not `Array.append(contentsOf:)` (about 100 instructions a call).
    private var storage: [UInt8] = []
    private var used = 0
    private var fields: [Field] = []
    /// Bytes of names and values held, charged as they are added: this memory is outside the
    /// script's Lua heap, so it has its own bound.
    private(set) var bytes = 0

    /// The most a script's header changes may hold per message (as much as a whole head).
    static let maxBytes = 64 * 1024

    var isEmpty: Bool { fields.isEmpty }

    /// Whether adding `count` more bytes stays within `maxBytes`.
    func fits(_ count: Int) -> Bool { bytes + count <= Self.maxBytes }

    mutating func removeAll() {
        if !fields.isEmpty { fields.removeAll(keepingCapacity: true) }
        // A kept-alive connection keeps a small store for its next request, not a large one.
        if storage.count > 4096 { storage = [] }
        used = 0
        bytes = 0
    }

    /// Replaces every field of this name with `value` (none when nil).
    mutating func set(_ name: UnsafeRawBufferPointer, _ value: UnsafeRawBufferPointer?) {
        storage.withUnsafeBytes { s in
            fields.removeAll { f in Int(f.nameCount) == name.count && HTTPBytes.equalsIgnoringCase(s, Int(f.name), name, 0, name.count) }
        }
        append(name, value, replaces: true)
    }

    /// Adds a field, keeping those already there.
    mutating func add(_ name: UnsafeRawBufferPointer, _ value: UnsafeRawBufferPointer) {
        append(name, value, replaces: false)
    }

    /// `add` for names and values the gateway makes as strings.
    mutating func add(_ name: String, _ value: String) {
        var name = name, value = value
        name.withUTF8 { n in value.withUTF8 { v in add(UnsafeRawBufferPointer(n), UnsafeRawBufferPointer(v)) } }
    }

    /// `add` for a fixed name and a whole number, spelled in decimal.
    mutating func add(_ name: StaticString, decimal value: Int64) {
        withUnsafeTemporaryAllocation(of: UInt8.self, capacity: 20) { digits in
            var v = value.magnitude
            var i = 20
            repeat {
                i -= 1
                digits[i] = UInt8(truncatingIfNeeded: 48 + v % 10)
                v /= 10
            } while v > 0
            if value < 0 {
                i -= 1
                digits[i] = UInt8(ascii: "-")
            }
            add(UnsafeRawBufferPointer(start: name.utf8Start, count: name.utf8CodeUnitCount),
                UnsafeRawBufferPointer(rebasing: UnsafeRawBufferPointer(digits)[i..<20]))
        }
    }

    private mutating func append(_ name: UnsafeRawBufferPointer, _ value: UnsafeRawBufferPointer?, replaces: Bool) {
        bytes += name.count + (value?.count ?? 0) + 4
        let at = Int32(used)
        put(name)
        if let value { put(value) }
        fields.append(Field(name: at, nameCount: Int32(name.count), value: value == nil ? -1 : at + Int32(name.count),
                            valueCount: Int32(value?.count ?? 0), replaces: replaces))
    }

    private mutating func put(_ bytes: UnsafeRawBufferPointer) {
        guard let from = bytes.baseAddress, bytes.count > 0 else { return }
        if used + bytes.count > storage.count {
            storage.append(contentsOf: repeatElement(0, count: max(256, storage.count, used + bytes.count - storage.count)))
        }
        let at = used
        storage.withUnsafeMutableBytes { $0.baseAddress!.advanced(by: at).copyMemory(from: from, byteCount: bytes.count) }
        used += bytes.count
    }

    private func same(_ f: Field, _ name: UnsafeRawBufferPointer) -> Bool {
        Int(f.nameCount) == name.count
            && storage.withUnsafeBytes { HTTPBytes.equalsIgnoringCase($0, Int(f.name), name, 0, name.count) }
    }

    private func same(_ f: Field, _ lowered: StaticString) -> Bool {
        storage.withUnsafeBytes { HTTPBytes.equalsLower($0, Int(f.name), Int(f.nameCount), lowered) }
    }

    /// Whether any change names this field (set, added or removed).
    func contains(_ lowered: StaticString) -> Bool { fields.contains { same($0, lowered) } }

    func contains(named name: UnsafeRawBufferPointer) -> Bool { fields.contains { same($0, name) } }

    /// Whether the message's own fields of this name are dropped.
    func replaces(named name: UnsafeRawBufferPointer) -> Bool { fields.contains { $0.replaces && same($0, name) } }

    /// Calls `body` with each value set or added for `name`, in order, until it returns false;
    /// false when it was stopped.
    func forEachValue(named name: UnsafeRawBufferPointer, _ body: (UnsafeRawBufferPointer) -> Bool) -> Bool {
        storage.withUnsafeBytes { s in
            for f in fields where f.value >= 0 && same(f, name) {
                if !body(UnsafeRawBufferPointer(rebasing: s[Int(f.value)..<Int(f.value + f.valueCount)])) { return false }
            }
            return true
        }
    }

    /// Calls `body` with each change: the name, and the value (nil for a removal).
    func forEach(_ body: (UnsafeRawBufferPointer, UnsafeRawBufferPointer?) -> Void) {
        storage.withUnsafeBytes { s in
            for f in fields {
                let name = UnsafeRawBufferPointer(rebasing: s[Int(f.name)..<Int(f.name + f.nameCount)])
                body(name, f.value < 0 ? nil : UnsafeRawBufferPointer(rebasing: s[Int(f.value)..<Int(f.value + f.valueCount)]))
            }
        }
    }

    /// Adds the fields of `other` whose names this set does not touch.
    mutating func merge(_ other: HeaderEdits) {
        let own = fields.count
        other.forEach { name, value in
            guard let value else { return }
            if !fields[0..<own].contains(where: { same($0, name) }) { add(name, value) }
        }
    }

    /// Writes the first value set for `lowered` (true), or nothing (false).
    func writeFirstValue(of lowered: StaticString, into w: inout HeadWriter) -> Bool {
        guard let f = fields.first(where: { $0.value >= 0 && same($0, lowered) }) else { return false }
        storage.withUnsafeBytes { w.put($0, Int(f.value), Int(f.valueCount)) }
        return true
    }

    /// Whether an original field named `p[start..<start+count]` is dropped.
    func drops(_ p: UnsafeRawBufferPointer, _ start: Int, _ count: Int) -> Bool {
        storage.withUnsafeBytes { s in
            fields.contains { f in f.replaces && Int(f.nameCount) == count && HTTPBytes.equalsIgnoringCase(s, Int(f.name), p, start, count) }
        }
    }

    /// Writes the fields the edits add (`Name: value CRLF` each), except `skip` (written elsewhere).
    func write(into w: inout HeadWriter, skipping skip: StaticString? = nil) {
        storage.withUnsafeBytes { s in
            for f in fields where f.value >= 0 {
                if let skip, HTTPBytes.equalsLower(s, Int(f.name), Int(f.nameCount), skip) { continue }
                w.put(s, Int(f.name), Int(f.nameCount))
                w.put(": ")
                w.put(s, Int(f.value), Int(f.valueCount))
                w.put("\r\n")
            }
        }
    }
}

/// Checks header names and values from scripts.
enum HeaderCheck {
    /// Fields the gateway itself writes from the message's framing and the connection:
    /// content-length, transfer-encoding, connection, keep-alive, te, trailer, upgrade. A
    /// switch on the length, not a set: this runs for every header a script sets.
    static func isFraming(_ n: UnsafeRawBufferPointer) -> Bool {
        let c = n.count
        switch c {
        case 2: return HTTPBytes.equalsLower(n, 0, c, "te")
        case 7: return HTTPBytes.equalsLower(n, 0, c, "trailer") || HTTPBytes.equalsLower(n, 0, c, "upgrade")
        case 10: return HTTPBytes.equalsLower(n, 0, c, "connection") || HTTPBytes.equalsLower(n, 0, c, "keep-alive")
        case 14: return HTTPBytes.equalsLower(n, 0, c, "content-length")
        case 17: return HTTPBytes.equalsLower(n, 0, c, "transfer-encoding")
        default: return false
        }
    }

    /// `Proxy-*` fields are hop-by-hop (RFC 9110 7.6.1).
    static func isProxy(_ n: UnsafeRawBufferPointer) -> Bool { HTTPBytes.hasPrefixLower(n, 0, n.count, "proxy-") }

    /// Request fields the gateway sets for the upstream's trust in them.
    static func isForwarding(_ n: UnsafeRawBufferPointer) -> Bool {
        let c = n.count
        switch c {
        case 12: return HTTPBytes.equalsLower(n, 0, c, "x-request-id")
        case 15: return HTTPBytes.equalsLower(n, 0, c, "x-forwarded-for")
        case 16: return HTTPBytes.equalsLower(n, 0, c, "x-forwarded-host")
        case 17: return HTTPBytes.equalsLower(n, 0, c, "x-forwarded-proto")
        default: return false
        }
    }

    static func name(_ bytes: UnsafeRawBufferPointer) -> String? {
        if bytes.isEmpty { return "empty header name" }
        if bytes.count > 256 { return "header name longer than 256 bytes" }
        let token = HTTPBytes.tokenTable
        for c in bytes where token[Int(c)] == 0 { return "invalid character in header name" }
        return nil
    }

    static func value(_ bytes: UnsafeRawBufferPointer) -> String? {
        if bytes.count > 16 * 1024 { return "header value longer than 16 KiB" }
        if bytes.isEmpty { return nil }
        let end = HTTPBytes.valueEnd(bytes, from: 0, end: bytes.count)
        guard end < bytes.count else { return nil }
        let c = bytes[end]
        return c == HTTPBytes.cr || c == HTTPBytes.lf ? "header value contains CR or LF" : "invalid character in header value"
    }

    /// Values lose the spaces around them, as a parser would.
    static func trimmed(_ bytes: UnsafeRawBufferPointer) -> UnsafeRawBufferPointer {
        var start = 0, end = bytes.count
        while start < end, bytes[start] == HTTPBytes.sp || bytes[start] == HTTPBytes.htab { start += 1 }
        while end > start, bytes[end - 1] == HTTPBytes.sp || bytes[end - 1] == HTTPBytes.htab { end -= 1 }
        return UnsafeRawBufferPointer(rebasing: bytes[start..<end])
    }
}
