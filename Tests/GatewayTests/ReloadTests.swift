import Foundation
import Testing

@Suite(.serialized) struct ReloadTests {
    static let v2 = TestGateway.defaultConfig.replacingOccurrences(of: "host_header: internal.example", with: "host_header: v2.example")

    /// Clients hammer the gateway while it reloads a valid config, then an invalid one: no
    /// request fails, the valid one takes effect, the invalid one changes nothing.
    @Test func reloadsUnderLoadWithoutFailedRequests() async throws {
        try await withGateway { gw in
            let load = Load(port: gw.port, clients: 8, target: "/fixed-host")
            try await Task.sleep(for: .milliseconds(300))
            let good = try await gw.rewrite(Self.v2)
            #expect(good.succeeded)
            try await Task.sleep(for: .milliseconds(300))
            let bad = try await gw.rewrite(Self.v2 + "\n  - name: broken\n    upstream: billing\n")
            #expect(!bad.succeeded)
            #expect(bad.errors.first?.contains("routes[9].upstream: unknown upstream \"billing\"") == true, "\(bad.errors)")
            #expect(bad.generation == good.generation, "the last good generation keeps serving")
            try await Task.sleep(for: .milliseconds(300))
            try await load.stop()
            #expect(load.failures.value == 0)
            #expect(load.served.value > 100)
            #expect(try gw.client().request("GET", "/fixed-host").echoed("Host") == ["v2.example"])
        }
    }

    @Test func opensNewListenersAndDrainsRemovedOnes() async throws {
        try await withGateway { gw in
            let kept = try gw.client()
            #expect(try kept.request("GET", "/echo").status == 200)
            // Listen on a second, free port as well.
            let probe = try RawClient.freePort()
            let two = TestGateway.defaultConfig.replacingOccurrences(
                of: "    address: 127.0.0.1:@PORT@", with: "    address: 127.0.0.1:@PORT@\n  - name: second\n    address: 127.0.0.1:\(probe)")
            #expect(try await gw.rewrite(two).succeeded)
            #expect(try RawClient(port: probe).request("GET", "/echo").status == 200)
            // Remove the first: new connections are refused there, the open idle one is closed.
            let onlySecond = TestGateway.defaultConfig.replacingOccurrences(of: "127.0.0.1:@PORT@", with: "127.0.0.1:\(probe)")
                .replacingOccurrences(of: "name: test", with: "name: second")
            #expect(try await gw.rewrite(onlySecond).succeeded)
            #expect(kept.isClosedByPeer())
            #expect(throws: RawClient.Failure.self) { try RawClient(port: gw.port) }
            #expect(try RawClient(port: probe).request("GET", "/echo").status == 200)
        }
    }

    @Test func inFlightRequestFinishesOnItsGeneration() async throws {
        try await withGateway { gw in
            let c = try gw.client()
            try c.send("GET /slow-fixed/delay/400 HTTP/1.1\r\nHost: a\r\n\r\n")
            #expect(try await gw.rewrite(Self.v2).succeeded)
            let r = try c.readResponse()
            #expect(r.echoed("Host") == ["internal.example"], "the request began before the reload")
            #expect(try c.request("GET", "/fixed-host").echoed("Host") == ["v2.example"])
        }
    }
}

/// The ports `freePort` has handed out in this process.
final class GivenPorts: @unchecked Sendable {
    static let shared = GivenPorts()
    private let lock = NSLock()
    private var given: Set<Int> = []
    /// True when `port` had not been handed out yet (it is now).
    func take(_ port: Int) -> Bool { lock.withLock { given.insert(port).inserted } }
}

final class LockedFlag: @unchecked Sendable {
    private let lock = NSLock()
    private var value = false
    func set() { lock.withLock { value = true } }
    var isSet: Bool { lock.withLock { value } }
}

extension RawClient {
    /// A loopback port nothing listens on right now, and never handed out before in this
    /// run: the kernel may pick a closed port again for the next caller, and tests run in
    /// parallel (two servers of two tests once shared a port and each test saw the other's).
    static func freePort() throws -> Int {
        while true {
            let (fd, port) = boundSocket()
            close(fd)
            if GivenPorts.shared.take(port) { return port }
        }
    }

    /// A socket bound to a free loopback port (listening, with `backlog`, if given).
    static func boundSocket(listenBacklog backlog: Int32? = nil) -> (fd: Int32, port: Int) {
        let fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
        var addr = sockaddr_in()
        addr.sin_family = sa_family_t(AF_INET)
        addr.sin_addr.s_addr = inet_addr("127.0.0.1")
        _ = withUnsafePointer(to: &addr) { $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { bind(fd, $0, socklen_t(MemoryLayout<sockaddr_in>.size)) } }
        if let backlog { listen(fd, backlog) }
        var len = socklen_t(MemoryLayout<sockaddr_in>.size)
        _ = withUnsafeMutablePointer(to: &addr) { $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { getsockname(fd, $0, &len) } }
        return (fd, Int(UInt16(bigEndian: addr.sin_port)))
    }
}

@Suite struct ListenerSafetyTests {
    /// With SO_REUSEPORT a second process could silently share a port; it must fail instead.
    @Test func refusesAPortSomeoneAlreadyListensOn() async throws {
        try await withGateway { gw in
            let taken = TestGateway.defaultConfig.replacingOccurrences(of: "    address: 127.0.0.1:@PORT@", with: "    address: 127.0.0.1:@PORT@\n  - name: clash\n    address: 127.0.0.1:\(gw.echoPort)")
            let result = try await gw.rewrite(taken)
            #expect(!result.succeeded)
            #expect(result.errors.first?.contains("listener \"clash\" cannot listen on 127.0.0.1:\(gw.echoPort): address already in use") == true, "\(result.errors)")
            let before = gw.stats.accepted.withLockedValue { $0 }
            #expect(try gw.client().request("GET", "/echo").status == 200, "the old generation keeps serving")
            #expect(gw.stats.accepted.withLockedValue { $0 } >= before)
        }
    }
}
