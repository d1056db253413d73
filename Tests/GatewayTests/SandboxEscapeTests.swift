import EchoUpstream
import Foundation
import NIOPosix
import Testing

/// The escapes an outside review found, on the gateway as a user runs it (one worker, so an
/// escaped script would stall everything): each attack is stopped within the time budget,
/// the worker answers another connection meanwhile within the budget plus a margin, and the
/// log names the line that spent the budget.
@Suite(.serialized) struct SandboxEscapeTests {
    static let budget = 0.05
    /// What a loaded CI machine may add to the budget before the other request is answered.
    static let margin = 0.45

    static let policy = """
        local big = string.rep("a", 1 << 22)
        local needle = string.rep("a", 1 << 12) .. "b"
        local attacks = {
          ["/escape/xpcall-error"] = function()
            xpcall(function() error("x") end, function() while true do end end)
          end,
          ["/escape/xpcall-budget"] = function()
            xpcall(function() while true do end end, function() while true do end end)
          end,
          ["/escape/plain-find"] = function()
            for i = 1, 1e9 do string.find(big, needle, 1, true) end
          end,
          ["/escape/special-free-find"] = function()
            for i = 1, 1e9 do string.find(big, needle) end
          end,
          ["/escape/randomseed"] = function() math.randomseed(7) end,
        }
        return { access = function(ctx) attacks[request.path()]() end }
        """

    /// The line of each attack in `policy`, and whether it is a budget or an error.
    static let attacks: [(path: String, line: Int, budget: Bool)] = [
        ("/escape/xpcall-error", 5, true),
        ("/escape/xpcall-budget", 8, true),
        ("/escape/plain-find", 11, true),
        ("/escape/special-free-find", 14, true),
        ("/escape/randomseed", 16, false),
    ]

    @Test func eachEscapeIsStoppedAtItsLineWhileTheWorkerServesOthers() async throws {
        let group = MultiThreadedEventLoopGroup(numberOfThreads: 1)
        let echo = try await EchoServer.start(host: "127.0.0.1", port: 0, group: group)
        let result = Result { try Self.attack(echoPort: echo.localAddress!.port!) }
        try? await echo.close()
        try? await group.shutdownGracefully()
        try result.get()
    }

    static func attack(echoPort: Int) throws {
        let child = try ProcessTests.Child(
            config: { port, echo in
                """
                listeners:
                  - address: 127.0.0.1:\(port)
                access_log: { to: "off" }
                scripts:
                  budget:
                    instructions: 1000000000000
                    time: 50ms
                    memory: 64MB
                upstreams:
                  echo:
                    targets: [ "127.0.0.1:\(echo)" ]
                routes:
                  - match: { path_prefix: /escape/ }
                    upstream: echo
                    policy: escape.lua
                  - match: { path_prefix: / }
                    upstream: echo
                """
            }, echoPort: echoPort,
            prepare: { folder in
                try FileManager.default.createDirectory(atPath: folder + "/policies", withIntermediateDirectories: true)
                try Self.policy.write(toFile: folder + "/policies/escape.lua", atomically: true, encoding: .utf8)
            })
        defer { if child.process.isRunning { kill(child.process.processIdentifier, SIGKILL) } }
        let port = child.port
        // A warm state, so the first attack does not also pay for loading the module.
        #expect(try RawClient(port: port).request("GET", "/plain").status == 200)

        for attack in Self.attacks {
            let attackResult = LockedBox<(Int, Double)?>(nil)
            let started = Date()
            let thread = Thread {
                let status = (try? RawClient(port: port, timeout: 5).request("GET", attack.path).status) ?? -1
                attackResult.set((status, Date().timeIntervalSince(started)))
            }
            thread.start()
            Thread.sleep(forTimeInterval: 0.01)
            let other = try RawClient(port: port, timeout: 3)
            let otherStart = Date()
            let answer = try other.request("GET", "/plain")
            let waited = Date().timeIntervalSince(otherStart)
            #expect(answer.status == 200, "\(attack.path)")
            #expect(waited < Self.budget + Self.margin, "\(attack.path): another connection waited \(waited) s")
            while attackResult.get() == nil, Date().timeIntervalSince(started) < 6 { Thread.sleep(forTimeInterval: 0.01) }
            let (status, took) = try #require(attackResult.get(), "\(attack.path) never answered")
            #expect(status == 500, "\(attack.path)")
            #expect(took < Self.budget + Self.margin, "\(attack.path) took \(took) s")
            let line = "policies/escape.lua:\(attack.line)"
            let logged = Date()
            while !child.log.contains(line), Date().timeIntervalSince(logged) < 2 { Thread.sleep(forTimeInterval: 0.02) }
            #expect(child.log.contains(line), "\(attack.path): the log should name \(line): \(child.log.suffix(3000))")
        }
        #expect(child.log.contains("math.randomseed is not available"))
        // SIGTERM completes: no loop is stuck.
        child.signal(SIGTERM)
        #expect(child.waitForExit(seconds: 10) == 0, "\(child.log.suffix(2000))")
    }
}

/// A value shared between a test and the thread it starts.
final class LockedBox<Value>: @unchecked Sendable {
    private let lock = NSLock()
    private var value: Value

    init(_ value: Value) { self.value = value }

    func get() -> Value { lock.withLock { value } }
    func set(_ new: Value) { lock.withLock { value = new } }
}
