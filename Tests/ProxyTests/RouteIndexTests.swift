import Config
import NIOCore
import Testing

@testable import Proxy

/// The route index gives the route trying every route in config order would give (the
/// first match), for random route tables and requests (a differential test against
/// `CompiledRoute.matches`, the old way).
@Suite struct RouteIndexTests {
    static let paths = ["/", "/a", "/a/", "/ab", "/a/b", "/a/b/", "/api", "/api/", "/api/v1", "/apix", "/api/v1/users", "/b", "/b/c"]
    static let hosts: [String?] = [nil, nil, "a.example", "B.example", "[::1]", "c.example"]
    static let methods: [[String]] = [[], [], ["GET"], ["POST", "PUT"]]

    struct Generator {
        var state: UInt64
        mutating func next(_ n: Int) -> Int {
            state = state &* 6364136223846793005 &+ 1442695040888963407
            return Int((state >> 33) % UInt64(n))
        }
    }

    static func head(_ text: String) throws -> (ByteBuffer, RequestHead) {
        let buffer = ByteBuffer(string: text)
        var head = RequestHead()
        try buffer.withUnsafeReadableBytes { p in
            try HeadParser.parseRequest(p, into: &head, limits: HeadLimits(maxHeaderBytes: 8192, maxHeaderCount: 100, maxURIBytes: 8192))
        }
        return (buffer, head)
    }

    @Test func agreesWithTryingEveryRouteInOrder() throws {
        var random = Generator(state: 20261203)
        var checked = 0, matched = 0
        for _ in 0..<200 {
            let count = 1 + random.next(24)
            let routes = (0..<count).map { index -> CompiledRoute in
                let path = Self.paths[random.next(Self.paths.count)]
                var route = Route(
                    name: "r\(index)", host: Self.hosts[random.next(Self.hosts.count)],
                    path: random.next(3) == 0 ? .exact(path) : .prefix(path), methods: Self.methods[random.next(Self.methods.count)], upstream: 0)
                route.stripPrefix = false
                return CompiledRoute(route, index: index, defaultMaxBody: 0, policy: -1)
            }
            let index = RouteIndex(routes)
            for _ in 0..<50 {
                var path = Self.paths[random.next(Self.paths.count)]
                if random.next(3) == 0 { path += ["x", "/x", "/", "v1"][random.next(4)] }
                if random.next(4) == 0 { path += "?q=/api" }
                let method = ["GET", "POST", "PUT", "DELETE"][random.next(4)]
                let host = ["a.example", "A.EXAMPLE:8080", "b.example", "c.example", "b.example:443", "[::1]:8080", "[::1]", "C.Example"][random.next(8)]
                let (buffer, head) = try Self.head("\(method) \(path) HTTP/1.1\r\nHost: \(host)\r\n\r\n")
                let (fast, slow) = buffer.withUnsafeReadableBytes { p in
                    (index.match(p, head, routes)?.index, routes.first { $0.matches(p, head) }?.index)
                }
                #expect(fast == slow, "\(method) \(path) \(host) against \(routes.map { "\($0.exact ? "=" : "")\(String(decoding: $0.path, as: UTF8.self)) \($0.host.map { String(decoding: $0, as: UTF8.self) } ?? "*") \($0.methods.map { String(decoding: $0, as: UTF8.self) })" })")
                checked += 1
                if slow != nil { matched += 1 }
            }
        }
        #expect(checked == 10_000)
        #expect(matched > 2_500, "the cases should match often enough to mean something: \(matched)")
    }

    /// Virtual hosts: 2,000 hosts with the same path; the request's host finds its route
    /// without trying the others.
    @Test func findsARouteAmongManyHosts() throws {
        let routes = (0..<2_000).map {
            CompiledRoute(Route(name: "h\($0)", host: "site-\($0).example", path: .prefix("/"), upstream: 0), index: $0, defaultMaxBody: 0, policy: -1)
        } + [CompiledRoute(Route(name: "fallback", path: .prefix("/"), upstream: 0), index: 2_000, defaultMaxBody: 0, policy: -1)]
        let index = RouteIndex(routes)
        let (buffer, head) = try Self.head("GET /x HTTP/1.1\r\nHost: SITE-1999.example:8443\r\n\r\n")
        #expect(buffer.withUnsafeReadableBytes { index.match($0, head, routes)?.index } == 1999)
        let (other, otherHead) = try Self.head("GET /x HTTP/1.1\r\nHost: elsewhere.example\r\n\r\n")
        #expect(other.withUnsafeReadableBytes { index.match($0, otherHead, routes)?.index } == 2_000)
    }

    @Test func findsTheLastOfTenThousandRoutesByItsPath() throws {
        // 10,000 prefix routes; a request for the last one is found by walking its path once.
        let routes = (0..<10_000).map { CompiledRoute(Route(name: "r\($0)", path: .prefix("/service-\($0)/"), upstream: 0), index: $0, defaultMaxBody: 0, policy: -1) }
        let index = RouteIndex(routes)
        let (buffer, head) = try Self.head("GET /service-9999/users HTTP/1.1\r\nHost: a\r\n\r\n")
        let found = buffer.withUnsafeReadableBytes { index.match($0, head, routes)?.index }
        #expect(found == 9999)
        let (missing, missingHead) = try Self.head("GET /nowhere HTTP/1.1\r\nHost: a\r\n\r\n")
        #expect(missing.withUnsafeReadableBytes { index.match($0, missingHead, routes) } == nil)
    }
}
