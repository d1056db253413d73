import NIOCore

/// Header changes a script made, applied when the head is written. Reads made after a change
/// see it. Entries are few (a script touches a handful of headers), so a list beats a map.
struct HeaderEdits {
    struct Entry {
        /// The name as the script spelled it (written as-is).
        var name: [UInt8]
        var lower: [UInt8]
        /// Values the script set or added, in order.
        var values: [[UInt8]]
        /// The original fields of this name are dropped (set or remove).
        var replaces: Bool
    }

    private(set) var entries: [Entry] = []
    /// Bytes of names and values held, charged as they are added: this memory is outside the
    /// script's Lua heap, so it has its own bound.
    private(set) var bytes = 0

    /// The most a script's header changes may hold per message (as much as a whole head).
    static let maxBytes = 64 * 1024

    var isEmpty: Bool { entries.isEmpty }

    /// Whether adding `count` more bytes stays within `maxBytes`.
    func fits(_ count: Int) -> Bool { bytes + count <= Self.maxBytes }

    mutating func removeAll() {
        if !entries.isEmpty { entries.removeAll(keepingCapacity: true) }
        bytes = 0
    }

    func entry(_ lower: [UInt8]) -> Entry? {
        entries.first { $0.lower == lower }
    }

    /// The entry for `name`, in any case (no lowered copy: reads happen per request).
    func entry(named name: UnsafeRawBufferPointer) -> Entry? {
        entries.first { e in
            e.lower.count == name.count && e.lower.withUnsafeBytes { HTTPBytes.equalsIgnoringCase($0, 0, name, 0, name.count) }
        }
    }

    /// Replaces every field of this name with `value` (none when nil).
    mutating func set(_ name: [UInt8], lower: [UInt8], _ value: [UInt8]?) {
        bytes += name.count + (value?.count ?? 0) + 4
        let entry = Entry(name: name, lower: lower, values: value.map { [$0] } ?? [], replaces: true)
        if let i = entries.firstIndex(where: { $0.lower == lower }) { entries[i] = entry } else { entries.append(entry) }
    }

    /// Adds a field, keeping those already there.
    mutating func add(_ name: [UInt8], lower: [UInt8], _ value: [UInt8]) {
        bytes += name.count + value.count + 4
        if let i = entries.firstIndex(where: { $0.lower == lower }) {
            entries[i].values.append(value)
        } else {
            entries.append(Entry(name: name, lower: lower, values: [value], replaces: false))
        }
    }

    /// Whether an original field named `p[start..<start+count]` is dropped.
    func drops(_ p: UnsafeRawBufferPointer, _ start: Int, _ count: Int) -> Bool {
        for e in entries where e.replaces && e.lower.count == count {
            var same = true
            for k in 0..<count where HTTPBytes.lower(p[start + k]) != e.lower[k] {
                same = false
                break
            }
            if same { return true }
        }
        return false
    }

    /// Writes the fields the edits add (`Name: value CRLF` each), except `skip` (written elsewhere).
    func write(into w: inout HeadWriter, skipping skip: [UInt8]? = nil) {
        for e in entries where e.lower != skip {
            for v in e.values {
                w.put(e.name)
                w.put(": ")
                w.put(v)
                w.put("\r\n")
            }
        }
    }
}

/// Checks a header name and value from a script; nil when fine, else why not.
enum HeaderCheck {
    /// Fields the gateway itself writes from the message's framing and the connection.
    static let framing: Set<[UInt8]> = Set(
        ["content-length", "transfer-encoding", "connection", "keep-alive", "te", "trailer", "upgrade"].map { Array($0.utf8) })
    /// Request fields the gateway sets for the upstream's trust in them.
    static let forwarding: Set<[UInt8]> = Set(
        ["x-forwarded-for", "x-forwarded-proto", "x-forwarded-host", "x-request-id"].map { Array($0.utf8) })

    /// `Proxy-*` fields are hop-by-hop (RFC 9110 7.6.1).
    static let proxyPrefix: [UInt8] = Array("proxy-".utf8)

    static func name(_ bytes: UnsafeRawBufferPointer) -> String? {
        if bytes.isEmpty { return "empty header name" }
        if bytes.count > 256 { return "header name longer than 256 bytes" }
        for c in bytes where !HTTPBytes.isTokenChar(c) { return "invalid character in header name" }
        return nil
    }

    static func value(_ bytes: UnsafeRawBufferPointer) -> String? {
        if bytes.count > 16 * 1024 { return "header value longer than 16 KiB" }
        for c in bytes where !HTTPBytes.isFieldValueChar(c) {
            return c == HTTPBytes.cr || c == HTTPBytes.lf ? "header value contains CR or LF" : "invalid character in header value"
        }
        return nil
    }

    static func lowered(_ bytes: UnsafeRawBufferPointer) -> [UInt8] {
        bytes.map { HTTPBytes.lower($0) }
    }

    /// Values lose the spaces around them, as a parser would.
    static func trimmed(_ bytes: UnsafeRawBufferPointer) -> [UInt8] {
        var start = 0, end = bytes.count
        while start < end, bytes[start] == HTTPBytes.sp || bytes[start] == HTTPBytes.htab { start += 1 }
        while end > start, bytes[end - 1] == HTTPBytes.sp || bytes[end - 1] == HTTPBytes.htab { end -= 1 }
        return Array(bytes[start..<end])
    }
}
