// Hot path: per request, no allocation.

/// Finds a request's route without trying every route in turn, as APISIX's and Kong's routers
/// do: by host first (routes for the request's host, and routes for any host), then a byte
/// trie over those routes' paths, walked once along the request's path, gives the few routes
/// whose path matches (prefixes met on the way, exact paths where it ends). Of those that
/// also match the method, the first in the config wins, as when routes were tried in file
/// order. Routing then costs the path's length, not the number of routes or hosts.
struct RouteIndex {
    /// Routes for any host.
    private let anyHost: PathTrie
    /// Routes by their host (lower case, no port), found by the host's hash.
    private let hosts: [[UInt8]]
    private let hostTries: [PathTrie]
    private let byHash: [UInt64: [Int32]]

    init(_ routes: [CompiledRoute]) {
        anyHost = PathTrie(routes.filter { $0.host == nil })
        var hosts: [[UInt8]] = []
        var members: [[CompiledRoute]] = []
        for route in routes {
            guard let host = route.host else { continue }
            if let i = hosts.firstIndex(of: host) {
                members[i].append(route)
            } else {
                hosts.append(host)
                members.append([route])
            }
        }
        self.hosts = hosts
        hostTries = members.map { PathTrie($0) }
        var byHash: [UInt64: [Int32]] = [:]
        for (i, host) in hosts.enumerated() { byHash[Self.hash(host), default: []].append(Int32(i)) }
        self.byHash = byHash
    }

    /// The first route (by config order) matching the request, or nil.
    @inline(__always)
    func match(_ p: UnsafeRawBufferPointer, _ head: RequestHead, _ routes: [CompiledRoute]) -> CompiledRoute? {
        var best = anyHost.first(p, head, routes)
        if !hosts.isEmpty, let (lower, end) = Self.hostRange(p, head), let candidates = byHash[Self.hash(p, lower, end)] {
            for i in candidates where Self.equalLowered(p, lower, end, hosts[Int(i)]) {
                best = min(best, hostTries[Int(i)].first(p, head, routes))
                break
            }
        }
        return best == .max ? nil : routes[Int(best)]
    }

    /// The request's host without its port (not from inside a bracketed IPv6 literal).
    @inline(__always)
    static func hostRange(_ p: UnsafeRawBufferPointer, _ head: RequestHead) -> (Int, Int)? {
        guard let h = head.headers.host else { return nil }
        var end = h.upper
        var i = end - 1
        while i > h.lower, p[i] >= 48, p[i] <= 57 { i -= 1 }
        if i > h.lower, p[i] == HTTPBytes.colon, p[i - 1] != HTTPBytes.colon { end = i }
        return (h.lower, end)
    }

    /// FNV-1a over lower-cased bytes: no allocation to find a host's routes.
    @inline(__always)
    static func hash(_ p: UnsafeRawBufferPointer, _ lower: Int, _ end: Int) -> UInt64 {
        var h: UInt64 = 0xcbf2_9ce4_8422_2325
        for i in lower..<end { h = (h ^ UInt64(HTTPBytes.lower(p[i]))) &* 0x100_0000_01b3 }
        return h
    }

    static func hash(_ host: [UInt8]) -> UInt64 {
        host.withUnsafeBytes { hash($0, 0, $0.count) }
    }

    @inline(__always)
    static func equalLowered(_ p: UnsafeRawBufferPointer, _ lower: Int, _ end: Int, _ host: [UInt8]) -> Bool {
        guard end - lower == host.count else { return false }
        for k in 0..<host.count where HTTPBytes.lower(p[lower + k]) != host[k] { return false }
        return true
    }
}

/// A byte trie over some routes' paths (see `RouteIndex`).
struct PathTrie {
    private struct Node {
        /// Children by next byte, sorted by byte (few per node: a linear scan beats a table).
        var bytes: [UInt8] = []
        var children: [Int32] = []
        /// Routes whose prefix ends here, by config order.
        var prefix: [Int32] = []
        /// Routes whose exact path ends here, by config order.
        var exact: [Int32] = []
    }

    /// The trie flattened for matching, one `Int32` array: per node, its edge count, prefix
    /// count and exact count, then (byte, child offset) per edge, then the routes. One buffer
    /// walked by offset: reading `Node`s (four arrays each) cost a retain and release per
    /// array per byte of the path (callgrind: 290 instructions a request with a short path).
    private let table: [Int32]

    init(_ routes: [CompiledRoute]) {
        // Built as linked nodes, then flattened; the nodes are not kept.
        var nodes = [Node()]
        for route in routes {
            var node = 0
            for byte in route.path { node = Self.child(of: node, byte, in: &nodes) }
            if route.exact {
                nodes[node].exact.append(Int32(route.index))
            } else {
                nodes[node].prefix.append(Int32(route.index))
            }
        }
        // Offsets first (a node's children come after it), then the table.
        var offsets = [Int](repeating: 0, count: nodes.count)
        var size = 0
        for (i, node) in nodes.enumerated() {
            offsets[i] = size
            size += 3 + 2 * node.bytes.count + node.prefix.count + node.exact.count
        }
        var table: [Int32] = []
        table.reserveCapacity(size)
        for node in nodes {
            table.append(Int32(node.bytes.count))
            table.append(Int32(node.prefix.count))
            table.append(Int32(node.exact.count))
            for (byte, child) in zip(node.bytes, node.children) {
                table.append(Int32(byte))
                table.append(Int32(offsets[Int(child)]))
            }
            table.append(contentsOf: node.prefix)
            table.append(contentsOf: node.exact)
        }
        self.table = table
    }

    private static func child(of node: Int, _ byte: UInt8, in nodes: inout [Node]) -> Int {
        let bytes = nodes[node].bytes
        var i = 0
        while i < bytes.count, bytes[i] < byte { i += 1 }
        if i < bytes.count, bytes[i] == byte { return Int(nodes[node].children[i]) }
        nodes.append(Node())
        let new = nodes.count - 1
        nodes[node].bytes.insert(byte, at: i)
        nodes[node].children.insert(Int32(new), at: i)
        return new
    }

    /// The index of the first of these routes (by config order) matching the request, or `Int32.max`.
    @inline(__always)
    func first(_ p: UnsafeRawBufferPointer, _ head: RequestHead, _ routes: [CompiledRoute]) -> Int32 {
        let start = head.path.lower
        let count = head.path.count
        let best: Int32 = table.withUnsafeBufferPointer { t in
            var best = Int32.max
            var node = 0
            var depth = 0
            while true {
                let edges = Int(t[node]), prefixes = Int(t[node + 1]), exacts = Int(t[node + 2])
                let routesAt = node + 3 + 2 * edges
                // A prefix matches at a segment boundary: "/api" takes "/api" and "/api/x", not
                // "/apix"; a prefix ending in "/" is plain.
                if prefixes > 0, depth == count || p[start + depth] == UInt8(ascii: "/") || (depth > 0 && p[start + depth - 1] == UInt8(ascii: "/")) {
                    best = Self.first(t, from: routesAt, count: prefixes, below: best, p, head, routes)
                }
                if depth == count {
                    if exacts > 0 { best = Self.first(t, from: routesAt + prefixes, count: exacts, below: best, p, head, routes) }
                    break
                }
                let byte = Int32(p[start + depth])
                var next = -1
                var e = node + 3
                let end = e + 2 * edges
                while e < end {
                    let b = t[e]
                    if b == byte {
                        next = Int(t[e + 1])
                        break
                    }
                    if b > byte { break }
                    e += 2
                }
                if next < 0 { break }
                node = next
                depth += 1
            }
            return best
        }
        return best
    }

    /// The first of the `count` routes at `from` (ascending) before `best` whose host and methods match.
    @inline(__always)
    private static func first(
        _ t: UnsafeBufferPointer<Int32>, from: Int, count: Int, below best: Int32, _ p: UnsafeRawBufferPointer, _ head: RequestHead,
        _ routes: [CompiledRoute]
    ) -> Int32 {
        for i in from..<(from + count) {
            let index = t[i]
            if index >= best { break }
            if routes[Int(index)].matchesHostAndMethod(p, head) { return index }
        }
        return best
    }
}
