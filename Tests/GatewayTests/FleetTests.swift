import EchoUpstream
import Foundation
import TestSupport
import NIOPosix
import PostgresTestServer
import Testing

/// Three `moongate` processes on one PostgreSQL store, under load: writes through one
/// gateway's admin API reach all three, PostgreSQL is killed and started again, and not one
/// request fails.
@Suite(.serialized) struct FleetTests {
    static func config(pg: PostgresProcess, folder: String, admin: Int, cache: String) -> (Int, Int) -> String {
        { port, echo in
            """
            listeners:
              - address: 127.0.0.1:\(port)
            admin:
              address: 127.0.0.1:\(admin)
              token_file: \(folder)/admin.token
            store:
              kind: postgres
              url: \(pg.url)
              cache: \(cache)
              poll: 1s
            access_log: { to: "off" }
            timeouts:
              drain: 5s
            upstreams:
              echo:
                targets: [ "127.0.0.1:\(echo)" ]
            routes:
              - name: svc
                match: { path_prefix: /svc/ }
                upstream: echo
            """
        }
    }

    static func put(admin: Int, _ path: String, _ body: String) throws -> Int {
        try RawClient(port: admin).request(
            "PUT", path, headers: [("Authorization", "Bearer \(AdminAPITests.token.token)")], body: Array(body.utf8)
        ).status
    }

    /// Waits until every gateway answers `path` with 200; the seconds that took.
    static func converged(_ ports: [Int], _ path: String, within seconds: Double = 5) throws -> Double {
        let start = Date()
        var pending = Set(ports)
        while !pending.isEmpty {
            for port in pending where (try? RawClient(port: port, timeout: 1).request("GET", path).status) == 200 { pending.remove(port) }
            if Date().timeIntervalSince(start) > seconds { throw RawClient.Failure(description: "\(path) not served by \(pending.sorted()) within \(seconds) s") }
            if !pending.isEmpty { usleep(5_000) }
        }
        return Date().timeIntervalSince(start)
    }

    @Test func writesConvergeAndAStoreOutageFailsNoRequest() async throws {
        let pg = try await onItsOwnThread { try PostgresProcess() }
        let folder = NSTemporaryDirectory() + "moongate-fleet-\(UUID().uuidString)"
        try FileManager.default.createDirectory(atPath: folder, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(atPath: folder) }
        try "\(AdminAPITests.token.line)\n".write(toFile: folder + "/admin.token", atomically: true, encoding: .utf8)
        let group = MultiThreadedEventLoopGroup(numberOfThreads: 1)
        let echoChannel = try await EchoServer.start(host: "127.0.0.1", port: 0, group: group)
        let echo = echoChannel.localAddress!.port!
        do {
            var children: [ProcessTests.Child] = []
            var admins: [Int] = []
            for i in 0..<3 {
                let admin = try RawClient.freePort()
                admins.append(admin)
                children.append(
                    try ProcessTests.Child(config: Self.config(pg: pg, folder: folder, admin: admin, cache: "\(folder)/cache-\(i).json"), echoPort: echo))
            }
            let ports = children.map(\.port)
            let loads = ports.map { Load(port: $0, clients: 2, target: "/svc/x") }

            var times: [Double] = []
            for i in 0..<5 {
                #expect(try Self.put(admin: admins[i % 3], "/v1/routes/r\(i)", #"{"match":{"path":"/r\#(i)"},"upstream":"echo"}"#) == 200)
                times.append(try Self.converged(ports, "/r\(i)"))
            }

            // PostgreSQL goes away under load: the gateways keep serving; writes answer 503.
            try await onItsOwnThread { pg.kill() }
            usleep(500_000)
            #expect(try Self.put(admin: admins[0], "/v1/routes/down", #"{"match":{"path":"/down"},"upstream":"echo"}"#) == 503)
            usleep(500_000)
            try await onItsOwnThread { try pg.start() }
            // Back: a write converges again (the gateways reconnect with back-off, at most 5 s).
            var status = 0
            for _ in 0..<100 where status != 200 {
                status = (try? Self.put(admin: admins[1], "/v1/routes/back", #"{"match":{"path":"/back"},"upstream":"echo"}"#)) ?? 0
                if status != 200 { usleep(100_000) }
            }
            #expect(status == 200)
            times.append(try Self.converged(ports, "/back", within: 10))

            for load in loads { try await load.stop() }
            let served = loads.map(\.served.value).reduce(0, +)
            let failed = loads.map(\.failures.value).reduce(0, +)
            #expect(served > 100)
            #expect(failed == 0)
            // Convergence is bounded here (5 s, other suites share the machine); its figure
            // is scripts/bench --fleet's.
            for child in children {
                child.signal(SIGTERM)
                #expect(child.waitForExit(seconds: 10) == 0, "\(child.log.suffix(2000))")
            }
        }
        try? await echoChannel.close()
        try? await group.shutdownGracefully()
    }
}
