import Foundation
import Telemetry
import TestSupport
import Testing

/// `routes[].upgrade: [websocket]`: a WebSocket handshake runs the route's access phase, goes
/// to the upstream with its upgrade headers, and after the `101` the two connections are a
/// tunnel. Real client and server: Python's `websockets` (PyPI, installed by `scripts/test`
/// into `.build-venv`).
@Suite(.serialized) struct WebSocketTests {
    static var python: String { ProcessInfo.processInfo.environment["MOONGATE_PYTHON"] ?? "/usr/bin/python3" }

    /// Echoes messages; `close-me` is answered with a close (4000, "bye"); `headers` with the
    /// handshake's headers as JSON; a connection to `/ws/flood` is sent 64 MB in 1 MB
    /// messages, the bytes sent so far written to the file named by the second argument.
    static let server = """
        import asyncio, json, sys
        from websockets.asyncio.server import serve
        port, progress = int(sys.argv[1]), sys.argv[2]
        async def handler(ws):
            if ws.request.path.startswith("/ws/flood"):
                chunk, sent = b"x" * (1 << 20), 0
                for _ in range(64):
                    await ws.send(chunk)
                    sent += len(chunk)
                    with open(progress, "w") as f:
                        f.write(str(sent))
                await ws.wait_closed()
                return
            async for message in ws:
                if message == "close-me":
                    await ws.close(4000, "bye")
                    return
                if message == "headers":
                    await ws.send(json.dumps({k.lower(): v for k, v in ws.request.headers.raw_items()}))
                    continue
                await ws.send(message)
        async def main():
            async with serve(handler, "127.0.0.1", port, max_size=None, compression=None, ping_interval=None):
                await asyncio.Future()
        asyncio.run(main())
        """

    static let client = """
        import asyncio, json, os, sys, time
        from websockets.asyncio.client import connect
        from websockets.exceptions import ConnectionClosed, InvalidStatus
        import ssl
        url, mode, headers = sys.argv[1], sys.argv[2], json.loads(sys.argv[3])
        extra = {"ssl": ssl.create_default_context(cafile=sys.argv[4]), "server_hostname": "api.example.com"} if len(sys.argv) > 4 else {}
        async def main():
            out = {}
            try:
                async with connect(url, **extra, additional_headers=headers, max_size=None, compression=None, open_timeout=10, ping_interval=None, close_timeout=5, max_queue=1) as ws:
                    if mode == "echo":
                        await ws.send("hello")
                        out["text"] = await ws.recv()
                        await ws.send(b"\\x00\\x01\\x02\\xff")
                        out["binary"] = list(await ws.recv())
                        big = bytes(range(256)) * (1 << 16)
                        await ws.send(big)
                        out["big"] = (await ws.recv()) == big
                        await ws.send("headers")
                        out["headers"] = json.loads(await ws.recv())
                    elif mode == "server-close":
                        await ws.send("close-me")
                        try:
                            await ws.recv()
                        except ConnectionClosed as e:
                            out["code"], out["reason"] = e.rcvd.code, e.rcvd.reason
                    elif mode == "slow":
                        # Reads nothing for a while, notes what the server managed to send
                        # meanwhile, reads it all, then holds the tunnel until told to close.
                        await asyncio.sleep(float(headers["x-wait"]))
                        with open(headers["x-progress"]) as f:
                            out["sent_while_stalled"] = int(f.read() or "0")
                        read = 0
                        while read < 64 << 20:
                            read += len(await asyncio.wait_for(ws.recv(), 60))
                        out["read"] = read
                        for _ in range(1200):
                            if os.path.exists(headers["x-release"]):
                                break
                            await asyncio.sleep(0.05)
                    elif mode == "idle":
                        start = time.time()
                        try:
                            await ws.recv()
                        except ConnectionClosed:
                            out["closed_after"] = time.time() - start
                out["clean_close"] = ws.close_code
            except InvalidStatus as e:
                out["status"] = e.response.status_code
            except Exception as e:
                out["error"] = type(e).__name__ + ": " + str(e)
            print(json.dumps(out))
        asyncio.run(main())
        """

    final class Server: @unchecked Sendable {
        let port: Int
        let progress = NSTemporaryDirectory() + "moongate-ws-\(UUID().uuidString)"
        private let process: Process

        init() throws {
            port = try RawClient.freePort()
            process = try launchServer(WebSocketTests.python, ["-c", WebSocketTests.server, "\(port)", progress], port: port, name: "the WebSocket server")
        }

        var sent: Int { Int((try? String(contentsOfFile: progress, encoding: .utf8)) ?? "") ?? 0 }

        deinit {
            kill(process.processIdentifier, SIGKILL)
            process.waitUntilExit()
            try? FileManager.default.removeItem(atPath: progress)
        }
    }

    /// The client's JSON answer (immutable once parsed).
    struct Answer: @unchecked Sendable, CustomStringConvertible {
        let json: [String: Any]
        subscript(key: String) -> Any? { json[key] }
        var description: String { "\(json)" }
    }

    /// Runs the client to its end: its JSON answer.
    static func run(_ port: Int, _ path: String, _ mode: String, headers: [String: String] = [:], roots: String? = nil) throws -> Answer {
        let header = String(decoding: try JSONSerialization.data(withJSONObject: headers), as: UTF8.self)
        let url = (roots == nil ? "ws" : "wss") + "://127.0.0.1:\(port)\(path)"
        let (_, output) = try runTool(python, ["-c", client, url, mode, header] + (roots.map { [$0] } ?? []))
        let line = output.split(separator: "\n").last.map(String.init) ?? ""
        return Answer(json: (try? JSONSerialization.jsonObject(with: Data(line.utf8))) as? [String: Any] ?? ["output": output])
    }

    static func config(wsPort: Int, log: String, extra: String = "") -> String {
        """
        listeners:
          - name: public
            address: 127.0.0.1:@PORT@
        admin:
          address: 127.0.0.1:0
        access_log:
          to: \(log)
        \(extra)
        upstreams:
          ws:
            targets: [ "127.0.0.1:\(wsPort)" ]
          echo:
            targets: [ "@ECHO@" ]
        routes:
          - name: chat
            match: { path_prefix: /ws/ }
            upstream: ws
            upgrade: [websocket]
            policy: auth.lua
          - name: plain-ws
            match: { path_prefix: /plain/ }
            upstream: ws
          - name: echo
            match: { path_prefix: / }
            upstream: echo
            upgrade: [websocket]
        """
    }

    static let auth = """
        return {
          access = function(ctx)
            if request.header("Authorization") ~= "Bearer good" then
              request.respond(401, '{"error":"who are you"}', {["Content-Type"] = "application/json"})
            end
            request.set_header("X-User", "alice")
          end,
        }
        """

    static let good = ["Authorization": "Bearer good"]

    @Test func messagesPassBothWaysAndTheAccessPhaseGuardsTheHandshake() async throws {
        let server = try Server()
        let log = NSTemporaryDirectory() + "moongate-ws-log-\(UUID().uuidString)"
        defer { try? FileManager.default.removeItem(atPath: log) }
        try await withGateway(Self.config(wsPort: server.port, log: log), workers: 1, scripts: ["auth.lua": Self.auth]) { gw in
            let port = gw.port
            // The access phase refuses a handshake without the token: 401, no tunnel.
            let refused = try await offThePool { try Self.run(port, "/ws/chat", "echo") }
            #expect(refused["status"] as? Int == 401, "\(refused)")

            let echoed = try await offThePool { try Self.run(port, "/ws/chat", "echo", headers: Self.good) }
            #expect(echoed["text"] as? String == "hello", "\(echoed)")
            #expect(echoed["binary"] as? [Int] == [0, 1, 2, 255], "\(echoed)")
            #expect(echoed["big"] as? Bool == true, "a 16 MB message: \(echoed)")
            #expect(echoed["clean_close"] as? Int == 1000, "the client's close went through: \(echoed)")
            let headers = echoed["headers"] as? [String: String] ?? [:]
            #expect(headers["upgrade"] == "websocket", "\(headers)")
            #expect(headers["connection"]?.lowercased() == "upgrade", "\(headers)")
            #expect(headers["x-user"] == "alice", "the access phase's edits go with the handshake: \(headers)")
            #expect(headers["sec-websocket-key"] != nil, "\(headers)")
            #expect(headers["authorization"] == "Bearer good")

            // The server closes: the client hears its code and reason.
            let closed = try await offThePool { try Self.run(port, "/ws/chat", "server-close", headers: Self.good) }
            #expect(closed["code"] as? Int == 4000, "\(closed)")
            #expect(closed["reason"] as? String == "bye", "\(closed)")

            // One access-log line per tunnel, when it ends: 101, bytes each way.
            try await Task.sleep(for: .milliseconds(300))
            let lines = try String(contentsOfFile: log, encoding: .utf8).split(separator: "\n")
                .compactMap { try? JSONSerialization.jsonObject(with: Data($0.utf8)) as? [String: Any] }
            let tunnels = lines.filter { $0["status"] as? Int == 101 }
            #expect(tunnels.count == 2, "\(lines)")
            let first = tunnels.first ?? [:]
            #expect(first["route"] as? String == "chat")
            #expect((first["bytes_sent"] as? Int ?? 0) > 16 << 20, "\(first)")
            #expect((first["bytes_received"] as? Int ?? 0) > 16 << 20, "\(first)")
            #expect(lines.contains { $0["status"] as? Int == 401 })
        }
    }

    @Test func aSlowReaderHoldsTheSenderBackAndLosesNothing() async throws {
        let server = try Server()
        let release = server.progress + ".release"
        defer { try? FileManager.default.removeItem(atPath: release) }
        try await withGateway(Self.config(wsPort: server.port, log: "off"), workers: 1, scripts: ["auth.lua": Self.auth]) { gw in
            let port = gw.port
            let headers = Self.good.merging(["x-wait": "3", "x-progress": server.progress, "x-release": release]) { a, _ in a }
            async let result = offThePool { try Self.run(port, "/ws/flood", "slow", headers: headers) }
            // The client has read everything and holds the tunnel open: counted as open.
            let deadline = Date().addingTimeInterval(60)
            while server.sent < 64 << 20, Date() < deadline { try await Task.sleep(for: .milliseconds(50)) }
            let open = MetricsTests.samples(try await MetricsTests.admin(gw, "/metrics").text)
            #expect(MetricsTests.value(open, "moongate_tunnels_open", ["route": "chat"]) == 1)
            #expect(FileManager.default.createFile(atPath: release, contents: nil))
            let done = try await result
            // While the client read nothing, the server was held back by what the sockets hold,
            // not let through to fill the gateway's memory.
            let stalled = done["sent_while_stalled"] as? Int ?? -1
            #expect(stalled > 0 && stalled < 32 << 20, "sent \(stalled) bytes to a reader that read none: \(done)")
            #expect(done["read"] as? Int == 64 << 20, "\(done)")
            try await Task.sleep(for: .milliseconds(300))
            let after = MetricsTests.samples(try await MetricsTests.admin(gw, "/metrics").text)
            #expect(MetricsTests.value(after, "moongate_tunnels_open", ["route": "chat"]) == 0)
            #expect((MetricsTests.value(after, "moongate_tunnel_bytes_total", ["route": "chat", "direction": "downstream"]) ?? 0) >= Double(64 << 20))
        }
    }

    @Test func idleTunnelsCloseAndUpgradesOnlyGoWhereRoutesAllow() async throws {
        let server = try Server()
        let yaml = Self.config(wsPort: server.port, log: "off", extra: "timeouts: { tunnel_idle: 1s }")
        try await withGateway(yaml, workers: 1, scripts: ["auth.lua": Self.auth]) { gw in
            let port = gw.port
            let idle = try await offThePool { try Self.run(port, "/ws/chat", "idle", headers: Self.good) }
            let after = idle["closed_after"] as? Double ?? -1
            #expect(after >= 0.9 && after < 30, "\(idle)")

            // A route without `upgrade`: the Upgrade header is dropped, the server sees a plain
            // GET and refuses it (a WebSocket server answers 426).
            let plain = try await offThePool { try Self.run(port, "/plain/x", "echo") }
            #expect(plain["status"] as? Int == 426, "\(plain)")
            // h2c is never passed on, whatever the route allows: the echo upstream shows no Upgrade.
            let c = try gw.client()
            let h2c = try c.request("GET", "/h2c", headers: [("Connection", "Upgrade, HTTP2-Settings"), ("Upgrade", "h2c"), ("HTTP2-Settings", "AAMAAABkAAQAAP__")])
            #expect(h2c.status == 200)
            let echoed = String(decoding: h2c.body, as: UTF8.self).lowercased()
            #expect(!echoed.contains("upgrade") && !echoed.contains("http2-settings"), "\(echoed)")
        }
        // `upgrade: [h2c]` is a config error.
        try await withGateway(yaml, workers: 1, scripts: ["auth.lua": Self.auth]) { gw in
            let result = try await gw.rewrite(yaml.replacingOccurrences(of: "upgrade: [websocket]\n    policy", with: "upgrade: [h2c]\n    policy"))
            #expect(result.errors.first?.contains("routes[0].upgrade[0]: h2c upgrades are refused") == true, "\(result.errors)")
        }
    }

    @Test func shutdownDrainsTunnelsUpToTheDrainTimeout() async throws {
        let server = try Server()
        let yaml = Self.config(wsPort: server.port, log: "off", extra: "timeouts: { drain: 2s }")
        try await withGateway(yaml, workers: 1, scripts: ["auth.lua": Self.auth]) { gw in
            let port = gw.port
            async let idle = offThePool { try Self.run(port, "/ws/chat", "idle", headers: Self.good) }
            // Shutdown begins once the tunnel is open.
            let deadline = Date().addingTimeInterval(30)
            while Date() < deadline {
                let open = MetricsTests.samples(try await MetricsTests.admin(gw, "/metrics").text)
                if MetricsTests.value(open, "moongate_tunnels_open", ["route": "chat"]) == 1 { break }
                try await Task.sleep(for: .milliseconds(50))
            }
            let start = Date()
            await gw.gateway.shutdown()
            let took = Date().timeIntervalSince(start)
            let closed = try await idle
            // Not cut at once: the tunnel had the drain timeout, then was closed.
            #expect(took >= 1.5 && took < 30, "shutdown took \(took) s")
            let after = closed["closed_after"] as? Double ?? -1
            #expect(after >= 1.5 && after < 60, "\(closed)")
        }
    }

    @Test func aTunnelRunsOverATLSListener() async throws {
        let server = try Server()
        let certs = try MadeCertificates()
        try certs.make("api", subject: "api.example.com", altNames: ["api.example.com"])
        let roots = try certs.roots(["api"])
        let yaml = Self.config(wsPort: server.port, log: "off").replacingOccurrences(
            of: "address: 127.0.0.1:@PORT@",
            with: "address: 127.0.0.1:@PORT@\n    tls:\n      certificates: [ { cert: \(certs.path)/api.pem, key: \(certs.path)/api.key } ]")
        try await withGateway(yaml, workers: 1, scripts: ["auth.lua": Self.auth]) { gw in
            let port = gw.port
            let echoed = try await offThePool { try Self.run(port, "/ws/chat", "echo", headers: Self.good, roots: roots) }
            #expect(echoed["text"] as? String == "hello", "\(echoed)")
            #expect(echoed["big"] as? Bool == true, "\(echoed)")
            #expect(echoed["clean_close"] as? Int == 1000, "\(echoed)")
        }
    }
}
