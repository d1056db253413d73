// Hot path: per request, no allocation.

/// Finds a request's route without trying every route in turn: a byte trie over the routes'
/// paths, walked once along the request's path, gives the few routes whose path matches
/// (prefixes met on the way, exact paths where it ends); of those that also match the host
/// and method, the first in the config wins, as when routes were tried in file order.
/// Routing then costs the path's length, not the number of routes.
struct RouteIndex {
    private struct Node {
        /// Children by next byte, sorted by byte (few per node: a linear scan beats a table).
        var bytes: [UInt8] = []
        var children: [Int32] = []
        /// Routes whose prefix ends here, by config order.
        var prefix: [Int32] = []
        /// Routes whose exact path ends here, by config order.
        var exact: [Int32] = []
    }

    private var nodes = [Node()]
    /// The trie flattened for matching, one `Int32` array: per node, its edge count, prefix
    /// count and exact count, then (byte, child offset) per edge, then the routes. One buffer
    /// walked by offset: reading `Node`s (four arrays each) cost a retain and release per
    /// array per byte of the path (callgrind: 290 instructions a request with a short path).
    private var table: [Int32] = []

    init(_ routes: [CompiledRoute]) {
        for route in routes {
            var node = 0
            for byte in route.path { node = child(of: node, byte) }
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
        nodes = []
    }

    private mutating func child(of node: Int, _ byte: UInt8) -> Int {
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

    /// The first route (by config order) matching the request, or nil.
    @inline(__always)
    func match(_ p: UnsafeRawBufferPointer, _ head: RequestHead, _ routes: [CompiledRoute]) -> CompiledRoute? {
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
        return best == .max ? nil : routes[Int(best)]
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
