import Auth
import CJOSE
import EchoUpstream
import Foundation
import Gateway
import Logging
import NIOConcurrencyHelpers
import NIOPosix
import TestSupport
import Testing

/// The `moongate` binary as a user runs it: signals, file watching, exit codes, and memory
/// measured on its own process.
@Suite(.serialized) struct ProcessTests {
    static var binary: String {
        URL(fileURLWithPath: CommandLine.arguments[0]).deletingLastPathComponent().appendingPathComponent("moongate").path
    }

    /// A `moongate run` child process on a free port, proxying to an in-process echo upstream.
    final class Child {
        let process = Process()
        let port: Int
        let folder: URL
        let configPath: String
        let logPath: String
        let echoPort: Int

        /// `prepare` gets the config's folder before the gateway starts (to add scripts).
        /// `fdLimit` runs it under `ulimit -n` (through `sh`, which then `exec`s it).
        init(
            extraArgs: [String] = [], fdLimit: Int? = nil, config: (Int, Int) -> String, echoPort: Int,
            logFormat: String? = "text", prepare: (String) throws -> Void = { _ in }
        ) throws {
            port = try RawClient.freePort()
            self.echoPort = echoPort
            folder = FileManager.default.temporaryDirectory.appendingPathComponent("moongate-proc-\(UUID().uuidString)")
            try FileManager.default.createDirectory(at: folder, withIntermediateDirectories: true)
            configPath = folder.appendingPathComponent("gateway.yaml").path
            logPath = folder.appendingPathComponent("out.log").path
            try config(port, echoPort).write(toFile: configPath, atomically: true, encoding: .utf8)
            try prepare(folder.path)
            _ = FileManager.default.createFile(atPath: logPath, contents: nil)
            // Text unless a test asks otherwise: the tests read messages as written.
            let arguments = ["run", "--config", configPath, "--workers", "1"] + (logFormat.map { ["--log-format", $0] } ?? []) + extraArgs
            if let fdLimit {
                process.executableURL = URL(fileURLWithPath: "/bin/sh")
                process.arguments = ["-c", "ulimit -n \(fdLimit) && exec \"$0\" \"$@\"", ProcessTests.binary] + arguments
            } else {
                process.executableURL = URL(fileURLWithPath: ProcessTests.binary)
                process.arguments = arguments
            }
            let log = FileHandle(forWritingAtPath: logPath)!
            process.standardOutput = log
            process.standardError = log
            try process.run()
            for _ in 0..<100 {
                if (try? RawClient(port: port)) != nil { return }
                Thread.sleep(forTimeInterval: 0.05)
            }
            throw RawClient.Failure(description: "moongate did not listen: \(self.log)")
        }

        var log: String { (try? String(contentsOfFile: logPath, encoding: .utf8)) ?? "" }

        func signal(_ sig: Int32) { kill(process.processIdentifier, sig) }

        func rewrite(_ text: String) throws { try text.write(toFile: configPath, atomically: true, encoding: .utf8) }

        /// CPU time used so far (user and system), in clock ticks.
        var cpuTicks: Int {
            let stat = (try? String(contentsOfFile: "/proc/\(process.processIdentifier)/stat", encoding: .utf8)) ?? ""
            // Fields after the command name, which is in parentheses and may hold spaces.
            let fields = stat.split(separator: ")").last?.split(separator: " ") ?? []
            return fields.count > 13 ? (Int(fields[11]) ?? 0) + (Int(fields[12]) ?? 0) : 0
        }

        /// Peak resident memory so far, in KiB.
        var peakRSS: Int {
            let status = (try? String(contentsOfFile: "/proc/\(process.processIdentifier)/status", encoding: .utf8)) ?? ""
            let line = status.split(separator: "\n").first { $0.hasPrefix("VmHWM:") } ?? ""
            return Int(line.split(separator: " ", omittingEmptySubsequences: true).dropFirst().first ?? "0") ?? 0
        }

        func waitForExit(seconds: Double) -> Int32? {
            let deadline = Date().addingTimeInterval(seconds)
            while process.isRunning, Date() < deadline { Thread.sleep(forTimeInterval: 0.02) }
            return process.isRunning ? nil : process.terminationStatus
        }

        deinit {
            if process.isRunning { process.terminate() }
            try? FileManager.default.removeItem(at: folder)
        }
    }

    static func config(host: String = "one.example") -> (Int, Int) -> String {
        { port, echo in
            """
            listeners:
              - address: 127.0.0.1:\(port)
            timeouts:
              drain: 5s
            upstreams:
              echo:
                targets: [ "127.0.0.1:\(echo)" ]
            routes:
              - match: { path_prefix: / }
                upstream: echo
                host_header: \(host)
                max_body_bytes: 1GB
            """
        }
    }

    func withEcho<T>(_ body: (Int) throws -> T) async throws -> T {
        let group = MultiThreadedEventLoopGroup(numberOfThreads: 1)
        let echo = try await EchoServer.start(host: "127.0.0.1", port: 0, group: group)
        let result = Result { try body(echo.localAddress!.port!) }
        try? await echo.close()
        try? await group.shutdownGracefully()
        return try result.get()
    }

    /// SIGTERM (what a container runtime sends) and SIGINT (Ctrl-C) both drain and stop.
    @Test(arguments: [SIGTERM, SIGINT]) func gracefulShutdownFinishesAnInFlightRequestAndExitsZero(_ signal: Int32) async throws {
        try await withEcho { echoPort in
            let child = try Child(config: Self.config(), echoPort: echoPort)
            let slow = try RawClient(port: child.port)
            try slow.send("GET /delay/800 HTTP/1.1\r\nHost: a\r\n\r\n")
            Thread.sleep(forTimeInterval: 0.2)
            child.signal(signal)
            Thread.sleep(forTimeInterval: 0.2)
            #expect(throws: RawClient.Failure.self, "no new connections once draining") { try RawClient(port: child.port) }
            let r = try slow.readResponse()
            #expect(r.status == 200)
            #expect(r.json["uri"] as? String == "/delay/800")
            #expect(r.header("Connection") == "close")
            #expect(child.waitForExit(seconds: 5) == 0, "\(child.log)")
        }
    }

    @Test func sighupReloadsAndABadConfigKeepsServing() async throws {
        try await withEcho { echoPort in
            let child = try Child(extraArgs: ["--no-watch"], config: Self.config(), echoPort: echoPort)
            let c = try RawClient(port: child.port)
            #expect(try c.request("GET", "/").echoed("Host") == ["one.example"])
            try child.rewrite(Self.config(host: "two.example")(child.port, echoPort))
            child.signal(SIGHUP)
            var host = ""
            for _ in 0..<50 where host != "two.example" {
                Thread.sleep(forTimeInterval: 0.05)
                host = try c.request("GET", "/").echoed("Host").first ?? ""
            }
            #expect(host == "two.example")
            try child.rewrite(Self.config(host: "two.example")(child.port, echoPort) + "\n    oops: 1\n")
            child.signal(SIGHUP)
            Thread.sleep(forTimeInterval: 0.5)
            #expect(try c.request("GET", "/").echoed("Host") == ["two.example"])
            #expect(child.log.contains("gateway.yaml:13 routes[0].oops: unknown key \"oops\""), "\(child.log)")
            child.signal(SIGTERM)
            #expect(child.waitForExit(seconds: 5) == 0)
        }
    }

    /// With stderr not a terminal (a container's), operational logs are JSON lines: time,
    /// level, message, label and the metadata as fields; a config error reads as one object.
    @Test func operationalLogsAreJSONLinesWhenStderrIsNotATerminal() async throws {
        try await withEcho { echoPort in
            let child = try Child(config: Self.config(), echoPort: echoPort, logFormat: nil)
            try child.rewrite(Self.config()(child.port, echoPort) + "\n    oops: 1\n")
            child.signal(SIGHUP)
            var problem: [String: Any]?
            for _ in 0..<100 where problem == nil {
                Thread.sleep(forTimeInterval: 0.05)
                let objects = child.log.split(separator: "\n").compactMap { try? JSONSerialization.jsonObject(with: Data($0.utf8)) as? [String: Any] }
                problem = objects.first { "\($0)".contains("routes[0].oops: unknown key") }
            }
            #expect(problem?["level"] as? String != nil, "\(child.log)")
            #expect((problem?["time"] as? String)?.hasSuffix("Z") == true, "\(child.log)")
            #expect(problem?["label"] as? String == "moongate", "\(child.log)")
            // Every line of operational log is an object (the access log is off in this config).
            let lines = child.log.split(separator: "\n")
            #expect(!lines.isEmpty && lines.allSatisfy { (try? JSONSerialization.jsonObject(with: Data($0.utf8))) is [String: Any] }, "\(child.log)")
            child.signal(SIGTERM)
            #expect(child.waitForExit(seconds: 5) == 0)
        }
    }

    @Test func jsonLogsNeverWriteSecrets() {
        let lines = NIOLockedValueBox<[String]>([])
        var logger = Logger(label: "moongate") { label in JSONLogHandler(label: label) { line in lines.withLockedValue { $0.append(line) } } }
        logger.logLevel = .info
        logger.warning("a \"quoted\" message", metadata: ["Authorization": "Bearer abc", "password": "hunter2", "client-secret": "s", "route": "api"])
        let line = lines.withLockedValue { $0 }.first ?? ""
        let object = (try? JSONSerialization.jsonObject(with: Data(line.utf8))) as? [String: Any] ?? [:]
        #expect(object["message"] as? String == "a \"quoted\" message", "\(line)")
        #expect(object["level"] as? String == "warning")
        #expect(object["route"] as? String == "api")
        #expect(object["Authorization"] as? String == "[redacted]")
        #expect(object["password"] as? String == "[redacted]")
        #expect(object["client-secret"] as? String == "[redacted]")
        #expect(!line.contains("abc") && !line.contains("hunter2"), "\(line)")
    }

    /// SIGHUP's default action ends a process: it must be trapped before the port answers.
    @Test func sighupRightAfterStartDoesNotKill() async throws {
        try await withEcho { echoPort in
            for _ in 0..<3 {
                let child = try Child(extraArgs: ["--no-watch"], config: Self.config(), echoPort: echoPort)
                child.signal(SIGHUP)
                Thread.sleep(forTimeInterval: 0.2)
                #expect(child.process.isRunning, "\(child.log)")
                #expect(try RawClient(port: child.port).request("GET", "/").status == 200)
            }
        }
    }

    @Test func reloadsWhenTheFileChanges() async throws {
        try await withEcho { echoPort in
            let child = try Child(config: Self.config(), echoPort: echoPort)
            let c = try RawClient(port: child.port)
            #expect(try c.request("GET", "/").echoed("Host") == ["one.example"])
            try child.rewrite(Self.config(host: "watched.example")(child.port, echoPort))
            var host = ""
            for _ in 0..<60 where host != "watched.example" {
                Thread.sleep(forTimeInterval: 0.05)
                host = try c.request("GET", "/").echoed("Host").first ?? ""
            }
            #expect(host == "watched.example", "\(child.log)")
        }
    }

    /// A gateway whose one route runs `policy`, with `extra` config at the top level.
    static func policyConfig(_ policy: String, extra: String = "") -> (Int, Int) -> String {
        { port, echo in
            """
            listeners:
              - address: 127.0.0.1:\(port)
            upstreams:
              echo:
                targets: [ "127.0.0.1:\(echo)" ]
            routes:
              - match: { path_prefix: / }
                upstream: echo
                policy: \(policy)

            """ + extra
        }
    }

    /// Saving a script reloads it within a second, with no restart; a broken save is
    /// reported with its line and changes nothing.
    @Test func reloadsWhenAScriptChanges() async throws {
        try await withEcho { echoPort in
            let config = Self.policyConfig("tag.lua")
            let policy = { (v: String) in "return { access = function() request.set_header('X-Version', '\(v)') end }" }
            let child = try Child(config: config, echoPort: echoPort) { folder in
                try FileManager.default.createDirectory(atPath: folder + "/policies", withIntermediateDirectories: true)
                try policy("one").write(toFile: folder + "/policies/tag.lua", atomically: true, encoding: .utf8)
            }
            let c = try RawClient(port: child.port)
            #expect(try c.request("GET", "/").echoed("X-Version") == ["one"])
            let script = child.folder.appendingPathComponent("policies/tag.lua").path
            try "return { access = function()\n  oops(\nend }".write(toFile: script, atomically: true, encoding: .utf8)
            let broken = Date()
            while !child.log.contains("policies/tag.lua:3:"), Date().timeIntervalSince(broken) < 3 { Thread.sleep(forTimeInterval: 0.02) }
            #expect(child.log.contains("policies/tag.lua:3:"), "\(child.log)")
            #expect(try c.request("GET", "/").echoed("X-Version") == ["one"])
            try policy("two").write(toFile: script, atomically: true, encoding: .utf8)
            let written = Date()
            var version = ""
            while version != "two", Date().timeIntervalSince(written) < 3 {
                Thread.sleep(forTimeInterval: 0.02)
                version = try c.request("GET", "/").echoed("X-Version").first ?? ""
            }
            #expect(version == "two", "\(child.log)")
            #expect(Date().timeIntervalSince(written) < 1, "a script change takes effect within a second")
        }
    }

    /// Rotating a key is saving its file: the gateway reloads the keyset, a token signed with
    /// the new secret passes and one signed with the old is refused.
    @Test func reloadsWhenAKeyFileChanges() async throws {
        try await withEcho { echoPort in
            let config = Self.policyConfig("auth.lua", extra: "keysets:\n  users: { algorithms: [HS256], secret_file: jwt.secret }\n")
            let child = try Child(config: config, echoPort: echoPort) { folder in
                try "first-secret\n".write(toFile: folder + "/jwt.secret", atomically: true, encoding: .utf8)
                try FileManager.default.createDirectory(atPath: folder + "/policies", withIntermediateDirectories: true)
                try """
                return { access = function()
                  local claims, reason = jwt.verify((request.header("Authorization") or ""):match("^Bearer (.+)$"), "users")
                  if not claims then request.respond(401, reason) end
                end }
                """.write(toFile: folder + "/policies/auth.lua", atomically: true, encoding: .utf8)
            }
            func status(_ secret: String) throws -> Int {
                try RawClient(port: child.port).request("GET", "/", headers: [("Authorization", "Bearer " + Self.token(secret: secret))]).status
            }
            #expect(try status("first-secret") == 200)
            #expect(try status("second-secret") == 401)
            try "second-secret\n".write(toFile: child.folder.appendingPathComponent("jwt.secret").path, atomically: true, encoding: .utf8)
            let written = Date()
            while try status("second-secret") != 200, Date().timeIntervalSince(written) < 3 { Thread.sleep(forTimeInterval: 0.02) }
            #expect(try status("second-secret") == 200, "\(child.log)")
            #expect(try status("first-secret") == 401)
        }
    }

    /// Renewing a certificate is saving its files: new connections get the new one within a
    /// second, and a kept-alive TLS connection carries on throughout.
    @Test func servesARenewedCertificateWithoutDroppingAConnection() async throws {
        try await withEcho { echoPort in
            let certs = try MadeCertificates()
            let old = try certs.make("old", subject: "old.api.example.com", altNames: ["api.example.com"])
            let new = try certs.make("new", subject: "new.api.example.com", altNames: ["api.example.com"])
            let roots = try certs.roots(["old", "new"])
            let child = try Child(
                config: { port, echo in
                    """
                    listeners:
                      - address: 127.0.0.1:\(port)
                        tls: { certificates: [ { cert: api.pem, key: api.key } ] }
                    upstreams:
                      echo: { targets: [ "127.0.0.1:\(echo)" ] }
                    routes:
                      - match: { path_prefix: / }
                        upstream: echo
                    """
                }, echoPort: echoPort
            ) { folder in
                try FileManager.default.copyItem(atPath: old.cert, toPath: folder + "/api.pem")
                try FileManager.default.copyItem(atPath: old.key, toPath: folder + "/api.key")
            }
            func subject() throws -> String {
                let (_, out) = try runTool(
                    "/usr/bin/curl",
                    ["-sS", "-v", "--max-time", "5", "--cacert", roots, "--resolve", "api.example.com:\(child.port):127.0.0.1", "https://api.example.com:\(child.port)/"])
                return out.split(separator: "\n").first { $0.contains("subject: CN=") }.map(String.init) ?? out
            }
            #expect(try subject().contains("CN=old.api.example.com"))
            // One TLS connection making a request every 20 ms for 3 s, across the renewal.
            let script = """
                import socket, ssl, sys, time
                ctx = ssl.create_default_context(cafile=sys.argv[2])
                s = ctx.wrap_socket(socket.create_connection(("127.0.0.1", int(sys.argv[1])), timeout=5), server_hostname="api.example.com")
                ok = failed = 0
                end = time.time() + 3
                while time.time() < end:
                    try:
                        s.sendall(b"GET / HTTP/1.1\\r\\nHost: api.example.com\\r\\n\\r\\n")
                        data = b""
                        while b"\\r\\n\\r\\n" not in data: data += s.recv(65536)
                        head, body = data.split(b"\\r\\n\\r\\n", 1)
                        length = int([l.split(b":")[1] for l in head.split(b"\\r\\n") if l.lower().startswith(b"content-length")][0])
                        while len(body) < length: body += s.recv(65536)
                        ok += 1 if head.startswith(b"HTTP/1.1 200") else 0
                    except Exception:
                        failed += 1
                        break
                    time.sleep(0.02)
                print(ok, failed)
                """
            let loop = Process()
            loop.executableURL = URL(fileURLWithPath: "/usr/bin/python3")
            loop.arguments = ["-c", script, String(child.port), roots]
            let out = Pipe()
            loop.standardOutput = out
            try loop.run()
            Thread.sleep(forTimeInterval: 0.5)
            // Renewed: the key first, then the certificate, each replaced whole (as certbot's deploy does).
            try FileManager.default.removeItem(atPath: child.folder.path + "/api.key")
            try FileManager.default.copyItem(atPath: new.key, toPath: child.folder.path + "/api.key")
            try FileManager.default.removeItem(atPath: child.folder.path + "/api.pem")
            try FileManager.default.copyItem(atPath: new.cert, toPath: child.folder.path + "/api.pem")
            let written = Date()
            var served = try subject()
            while !served.contains("CN=new.api.example.com"), Date().timeIntervalSince(written) < 3 {
                Thread.sleep(forTimeInterval: 0.02)
                served = try subject()
            }
            #expect(served.contains("CN=new.api.example.com"), "\(child.log)")
            #expect(Date().timeIntervalSince(written) < 1, "a renewed certificate is served within a second")
            loop.waitUntilExit()
            let counts = String(decoding: out.fileHandleForReading.readDataToEndOfFile(), as: UTF8.self).split(separator: " ").compactMap { Int($0.trimmingCharacters(in: .whitespacesAndNewlines)) }
            #expect(counts.count == 2 && counts[0] > 50 && counts[1] == 0, "kept-alive requests ok, failed: \(counts)")
        }
    }

    /// An HS256 token with a far exp, signed with `secret`.
    static func token(secret: String) -> String {
        let input = Base64URL.encode(Array(#"{"alg":"HS256"}"#.utf8)) + "." + Base64URL.encode(Array(#"{"sub":"a","exp":4102444800}"#.utf8))
        var mac = [UInt8](repeating: 0, count: 64)
        let n = Array(input.utf8).withUnsafeBufferPointer { p in
            Array(secret.utf8).withUnsafeBufferPointer { s in mg_hmac(MG_ALG_HS256, s.baseAddress, s.count, p.baseAddress, p.count, &mac) }
        }
        return input + "." + Base64URL.encode(Array(mac[0..<n]))
    }

    /// 100 MB up and 100 MB down: the gateway's peak memory must not grow with the body.
    @Test func streamsLargeBodiesInBoundedMemory() async throws {
        try await withEcho { echoPort in
            let child = try Child(config: Self.config(), echoPort: echoPort)
            let c = try RawClient(port: child.port, timeout: 60)
            _ = try c.request("GET", "/")
            let before = child.peakRSS
            let size = 100 << 20
            try c.send("PUT /upload HTTP/1.1\r\nHost: a\r\nContent-Length: \(size)\r\n\r\n")
            let block = [UInt8](repeating: 7, count: 1 << 20)
            for _ in 0..<(size >> 20) { try c.send(block) }
            #expect(try c.readResponse().json["body_bytes"] as? Int == size)
            try c.send("GET /bytes/\(size) HTTP/1.1\r\nHost: a\r\n\r\n")
            let down = try c.readResponse(keepBody: false)
            #expect(down.bodyCount == size)
            let growth = child.peakRSS - before
            #expect(growth < 16 * 1024, "peak RSS grew \(growth) KiB while moving 200 MB")
        }
    }

    /// Clients that reset their connection while a large response streams to them: the
    /// gateway's sends fail (ECONNRESET, or EPIPE with its SIGPIPE, which the sockets suppress;
    /// `SocketLoopSignalTests` pins that down) and it keeps serving.
    @Test func aClientResetMidResponseDoesNotKillTheGateway() async throws {
        try await withEcho { echoPort in
            let child = try Child(config: Self.config(), echoPort: echoPort)
            for _ in 0..<3 {
                let c = try RawClient(port: child.port)
                try c.send("GET /bytes/\(64 << 20) HTTP/1.1\r\nHost: a\r\n\r\n")
                _ = try c.readLine()
                c.resetOnClose()
            }
            Thread.sleep(forTimeInterval: 0.5)
            #expect(child.process.isRunning, "\(child.log)")
            #expect(try RawClient(port: child.port).request("GET", "/").status == 200)
            child.signal(SIGTERM)
            #expect(child.waitForExit(seconds: 5) == 0)
        }
    }

    /// Out of descriptors: accepting pauses (100 ms at a time) instead of spinning on the
    /// connection the kernel keeps offering, and the gateway serves again once clients leave.
    @Test func runningOutOfDescriptorsPausesAcceptingInsteadOfSpinning() async throws {
        try await withEcho { echoPort in
            let child = try Child(fdLimit: 64, config: Self.config(), echoPort: echoPort)
            var clients: [RawClient] = []
            for _ in 0..<100 { clients.append(try RawClient(port: child.port)) }
            Thread.sleep(forTimeInterval: 0.3)
            let before = child.cpuTicks
            Thread.sleep(forTimeInterval: 1)
            let used = child.cpuTicks - before
            // A spinning accept loop takes the whole core: 100 ticks a second.
            #expect(used < 30, "\(used) ticks in 1 s with descriptors exhausted")
            #expect(child.log.contains("accept failed"), "\(child.log)")
            clients.removeAll()
            var status = 0
            for _ in 0..<40 where status != 200 {
                Thread.sleep(forTimeInterval: 0.05)
                status = (try? RawClient(port: child.port, timeout: 2).request("GET", "/").status) ?? 0
            }
            #expect(status == 200, "\(child.log)")
            #expect(child.process.isRunning)
        }
    }

    @Test func checkPrintsEveryErrorAndFails() throws {
        let folder = FileManager.default.temporaryDirectory.appendingPathComponent("moongate-check-\(UUID().uuidString)")
        try FileManager.default.createDirectory(at: folder, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(at: folder) }
        let path = folder.appendingPathComponent("gateway.yaml").path
        let head = """
        listeners:
          - address: 127.0.0.1:8080
        upstreams:
          app:
            targets: [ "127.0.0.1:9000" ]
        routes:

        """
        try (head + """
          - match: { path_prefix: / }
            upstream: billing
          - match: { path: nope }
            upstream: app
        """).write(toFile: path, atomically: true, encoding: .utf8)
        let (status, output) = try run(["check", "--config", path])
        #expect(status == 1)
        #expect(output.contains(#"gateway.yaml:8 routes[0].upstream: unknown upstream "billing""#), "\(output)")
        #expect(output.contains("gateway.yaml:9 routes[1].match.path: expected a path"), "\(output)")
        // A broken script is reported like a config error, with its file and line.
        try FileManager.default.createDirectory(atPath: folder.path + "/policies", withIntermediateDirectories: true)
        try "return {\n  access = function()\n    if then\n  end,\n}".write(toFile: folder.path + "/policies/auth.lua", atomically: true, encoding: .utf8)
        try (head + """
          - match: { path_prefix: / }
            upstream: app
            policy: auth.lua
        """).write(toFile: path, atomically: true, encoding: .utf8)
        let (scriptStatus, scriptOutput) = try run(["check", "--config", path])
        #expect(scriptStatus == 1)
        #expect(scriptOutput.contains("policies/auth.lua:3: unexpected symbol near 'then'"), "\(scriptOutput)")
        let root = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent().deletingLastPathComponent()
        let (ok, _) = try run(["check", "--config", root.appendingPathComponent("sandbox/gateway.yaml").path])
        #expect(ok == 0)
    }

    @Test func versionNamesTheLinkedLibraries() throws {
        let (status, output) = try run(["--version"])
        #expect(status == 0)
        #expect(output.contains("moongate"))
        #expect(output.contains("Lua 5.4"))
        #expect(output.contains("OpenSSL 3"))
        #expect(output.contains("hiredis"))
    }

    /// After start-up the gateway drops code pages only start-up touched; its resident set
    /// must be smaller than with `--keep-startup-pages`.
    @Test func releasingStartupPagesShrinksTheResidentSet() async throws {
        let group = MultiThreadedEventLoopGroup(numberOfThreads: 1)
        let echo = try await EchoServer.start(host: "127.0.0.1", port: 0, group: group)
        let echoPort = echo.localAddress!.port!
        // One at a time: the kernel keeps pages that another process also maps.
        func residentFile(_ args: [String]) async throws -> Int {
            let child = try Child(extraArgs: args, config: Self.config(), echoPort: echoPort)
            try await Task.sleep(for: .milliseconds(300))
            #expect(try RawClient(port: child.port).request("GET", "/").status == 200)
            let rss = child.rssFile
            child.signal(SIGTERM)
            _ = child.waitForExit(seconds: 5)
            return rss
        }
        // Debug builds keep most code in shared libraries that the test runner maps too, which
        // the kernel will not drop; the release binary goes from ~26 MB to ~12 MB (scripts/bench).
        // A gateway that another suite starts at the same moment maps the same binary and keeps
        // its pages resident, so a measurement that overlapped one is taken again.
        var kept = 0, released = 0
        for attempt in 0..<4 {
            if attempt > 0 { try await Task.sleep(for: .seconds(1)) }
            kept = try await residentFile(["--keep-startup-pages"])
            released = try await residentFile([])
            if released + 1024 < kept { break }
        }
        #expect(released + 1024 < kept, "released \(released) KiB vs kept \(kept) KiB")
        try? await echo.close()
        try? await group.shutdownGracefully()
    }

    func run(_ args: [String]) throws -> (Int32, String) {
        try runTool(Self.binary, args)
    }
}

extension ProcessTests.Child {
    /// File-backed resident memory, in KiB.
    var rssFile: Int {
        let status = (try? String(contentsOfFile: "/proc/\(process.processIdentifier)/status", encoding: .utf8)) ?? ""
        let line = status.split(separator: "\n").first { $0.hasPrefix("RssFile:") } ?? ""
        return Int(line.split(separator: " ", omittingEmptySubsequences: true).dropFirst().first ?? "0") ?? 0
    }
}
