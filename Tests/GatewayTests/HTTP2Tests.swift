import Foundation
import TestSupport
import Testing

/// HTTP/2 to clients: over TLS with ALPN `h2` and in clear with prior knowledge (`h2c: true`),
/// each stream served through the same routes and policies as an HTTP/1.1 request; real
/// clients (curl, nghttp, h2load), the known attacks written frame by frame (the `h2`
/// package's own layers, Support/h2attack.py), and GOAWAY on drain.
@Suite(.serialized) struct HTTP2Tests {
    static func config(_ certs: MadeCertificates, extra: String = "") -> String {
        """
        listeners:
          - name: clear
            address: 127.0.0.1:0
            h2c: true
          - name: secure
            address: 127.0.0.2:0
            tls:
              certificates:
                - { cert: \(certs.path)/api.pem, key: \(certs.path)/api.key }
        timeouts:
          client_idle: 3s
          request: 4s
          drain: 5s
        limits:
          max_body_bytes: 64MB
        \(extra)
        upstreams:
          echo:
            targets: [ "@ECHO@" ]
        routes:
          - name: private
            match: { path_prefix: /private/ }
            upstream: echo
            policy: key.lua
          - name: all
            match: { path_prefix: / }
            upstream: echo
        """
    }

    static let keyPolicy = """
        return {
          access = function(ctx)
            if request.header("x-api-key") ~= "sesame" then
              request.respond(401, '{"error":"no key"}', { ["Content-Type"] = "application/json" })
            end
            request.set_header("x-consumer", "tester")
          end,
        }
        """

    /// Runs `body` with a gateway on an h2c and a TLS listener (ports: clear, secure).
    static func withH2Gateway(extra: String = "", _ body: (TestGateway, Int, Int, String) async throws -> Void) async throws {
        let certs = try MadeCertificates()
        try certs.make("api", subject: "api.example.com", altNames: ["api.example.com"])
        let roots = try certs.roots(["api"])
        try await withGateway(config(certs, extra: extra), scripts: ["key.lua": keyPolicy]) { gw in
            let ports = await gw.gateway.boundPorts()
            try await body(gw, ports["clear"]!, ports["secure"]!, roots)
        }
    }

    static func curl(_ arguments: [String]) async throws -> (Int32, String) {
        try await onItsOwnThread { try runTool("/usr/bin/curl", ["-sS", "--max-time", "20"] + arguments) }
    }

    /// curl to a TLS listener on `port` (bound to 127.0.0.2 in the two-listener config).
    static func tls(_ port: Int, _ roots: String, _ path: String, host: String = "127.0.0.2") -> [String] {
        ["--http2", "--cacert", roots, "--resolve", "api.example.com:\(port):\(host)", "https://api.example.com:\(port)\(path)"]
    }

    static var attackScript: String {
        URL(fileURLWithPath: #filePath).deletingLastPathComponent().appendingPathComponent("Support/h2attack.py").path
    }

    /// What h2attack.py saw.
    struct Seen: Decodable {
        var goaway: Int?
        var closed: Bool
        var resets: [String: Int]
        var statuses: [String: Int]
        var data: [String: Int]
        var ended: [Int]
        /// A PING's answer.
        var pong: String?
        var seconds: Double
        /// The fields of each stream's last header block.
        var fields: [String: [String: String]]
    }

    static func attack(_ port: Int, _ name: String, _ arg: String? = nil) async throws -> Seen {
        let (status, output) = try await onItsOwnThread {
            try runTool(WebSocketTests.python, [attackScript, "\(port)", name] + (arg.map { [$0] } ?? []))
        }
        #expect(status == 0, "\(name): \(output)")
        let line = output.split(separator: "\n").last.map(String.init) ?? ""
        do {
            return try JSONDecoder().decode(Seen.self, from: Data(line.utf8))
        } catch {
            Issue.record("\(name): \(output)")
            throw error
        }
    }

    /// After an attack, another client on a new connection is served as usual.
    static func stillServes(_ port: Int) async throws {
        let (status, output) = try await curl(["--http2-prior-knowledge", "-o", "/dev/null", "-w", "%{http_code} %{http_version}", "http://127.0.0.1:\(port)/after"])
        #expect(status == 0 && output == "200 2", "\(output)")
    }

    @Test func curlSpeaksHTTP2OverTLSAndWithPriorKnowledgeThroughTheSameRoutesAndPolicies() async throws {
        try await Self.withH2Gateway { gw, clear, secure, roots in
            // TLS: ALPN picks h2; the upstream hears HTTP/1.1 with the usual forwarding fields.
            let (s1, tls) = try await Self.curl(["-v"] + Self.tls(secure, roots, "/hello?x=1"))
            #expect(s1 == 0, "\(tls)")
            #expect(tls.contains("ALPN: server accepted h2"), "\(tls)")
            #expect(tls.contains("< HTTP/2 200"), "\(tls)")
            #expect(tls.contains("\"uri\":\"/hello?x=1\""), "\(tls)")
            #expect(tls.contains("[\"X-Forwarded-Proto\",\"https\"]"), "\(tls)")
            #expect(tls.contains("[\"Host\",\"api.example.com:\(secure)\"]"), "\(tls)")
            // Prior knowledge on the h2c listener; HTTP/1.1 is still served there.
            // (One URL a run: curl 7.88 cannot reuse a prior-knowledge connection, nginx's
            // either; reuse is nghttp's and h2load's below.)
            let (s2, clear2) = try await Self.curl(["-v", "--http2-prior-knowledge", "http://127.0.0.1:\(clear)/a"])
            #expect(s2 == 0, "\(clear2)")
            #expect(clear2.contains("< HTTP/2 200"), "\(clear2)")
            #expect(clear2.contains("[\"X-Forwarded-Proto\",\"http\"]"), "\(clear2)")
            let (_, http1) = try await Self.curl(["-i", "http://127.0.0.1:\(clear)/h1"])
            #expect(http1.hasPrefix("HTTP/1.1 200"), "\(http1)")
            // A policy answers on the stream, or lets it through with its changes.
            let (_, refused) = try await Self.curl(["-i", "--http2-prior-knowledge", "http://127.0.0.1:\(clear)/private/x"])
            #expect(refused.hasPrefix("HTTP/2 401"), "\(refused)")
            #expect(refused.contains("{\"error\":\"no key\"}"), "\(refused)")
            let (_, allowed) = try await Self.curl(["-i", "-H", "X-Api-Key: sesame"] + Self.tls(secure, roots, "/private/y"))
            #expect(allowed.hasPrefix("HTTP/2 200"), "\(allowed)")
            #expect(allowed.contains("[\"x-consumer\",\"tester\"]"), "\(allowed)")
            // Cookies split over fields reach HTTP/1.1 as one.
            let (_, cookies) = try await Self.curl(["--http2-prior-knowledge", "-H", "Cookie: a=1", "-H", "Cookie: b=2", "http://127.0.0.1:\(clear)/c"])
            #expect(cookies.contains("[\"cookie\",\"a=1; b=2\"]"), "\(cookies)")
            // HEAD, 204 and 304 have no body; a refusal the gateway makes itself is an h2 answer too.
            let (_, head) = try await Self.curl(["-I", "--http2-prior-knowledge", "http://127.0.0.1:\(clear)/bytes/1000"])
            #expect(head.hasPrefix("HTTP/2 200") && head.contains("content-length: 1000"), "\(head)")
            let (_, noContent) = try await Self.curl(["-i", "--http2-prior-knowledge", "http://127.0.0.1:\(clear)/status/204"])
            #expect(noContent.hasPrefix("HTTP/2 204"), "\(noContent)")
        }
    }

    @Test func bodiesStreamBothWaysWithFlowControl() async throws {
        try await Self.withH2Gateway { _, clear, secure, roots in
            let folder = NSTemporaryDirectory() + "moongate-h2-\(UUID().uuidString)"
            try FileManager.default.createDirectory(atPath: folder, withIntermediateDirectories: true)
            defer { try? FileManager.default.removeItem(atPath: folder) }
            let file = folder + "/body"
            var bytes = [UInt8](repeating: 0, count: 3_000_000)
            for i in bytes.indices { bytes[i] = UInt8(truncatingIfNeeded: i &* 7919 >> 3) }
            try Data(bytes).write(to: URL(fileURLWithPath: file))
            // FNV-1a, as the echo upstream sums what it received.
            var sum: UInt64 = 0xcbf2_9ce4_8422_2325
            for b in bytes { sum = (sum ^ UInt64(b)) &* 0x100_0000_01b3 }
            let checksum = String(sum, radix: 16)
            // With a length (DATA forwarded as they come) and without one (each DATA a chunk upstream).
            let (_, sized) = try await Self.curl(["--http2-prior-knowledge", "--data-binary", "@\(file)", "http://127.0.0.1:\(clear)/upload"])
            #expect(sized.contains("\"body_bytes\":3000000") && sized.contains(checksum), "\(sized.prefix(600))")
            let (_, streamed) = try await Self.curl(["-T", file, "-H", "Content-Length:"] + Self.tls(secure, roots, "/upload"))
            #expect(streamed.contains("\"body_bytes\":3000000") && streamed.contains(checksum), "\(streamed.prefix(600))")
            #expect(streamed.contains("[\"Transfer-Encoding\",\"chunked\"]") || streamed.contains("chunked"), "\(streamed.prefix(600))")
            // Large answers, sized and chunked upstream, arrive whole.
            for path in ["/bytes/5000000", "/bytes/5000000?chunked=1"] {
                let (status, size) = try await Self.curl(["-o", "/dev/null", "-w", "%{size_download}"] + Self.tls(secure, roots, path))
                #expect(status == 0 && size == "5000000", "\(path): \(size)")
            }
        }
    }

    @Test func trailersPassToHTTP2AndHTTP1Clients() async throws {
        try await Self.withH2Gateway { _, clear, _, _ in
            // An HTTP/2 client gets them as a last HEADERS; what a trailer must not carry is dropped.
            let (_, nghttp) = try await onItsOwnThread {
                try runTool("/usr/bin/nghttp", ["-nv", "http://127.0.0.1:\(clear)/trailers"])
            }
            let last = nghttp.components(separatedBy: "recv (stream_id=13) ").dropFirst().map { $0.prefix(40) }
            #expect(last.contains { $0.hasPrefix("grpc-status: 0") }, "\(nghttp)")
            #expect(last.contains { $0.hasPrefix("x-checksum: abc") }, "\(nghttp)")
            #expect(!last.contains { $0.hasPrefix("content-length: 99") }, "\(nghttp)")
            #expect(nghttp.contains("flags=0x05, stream_id=13"), "\(nghttp)")  // HEADERS with END_STREAM
            // An HTTP/1.1 client in the chunked body's trailer section.
            let (_, raw) = try await Self.curl(["--http1.1", "--raw", "-i", "http://127.0.0.1:\(clear)/trailers"])
            #expect(raw.contains("0\r\ngrpc-status: 0\r\nx-checksum: abc\r\n\r\n"), "\(raw)")
            // (The trailer section only: a request id may hold "99" too.)
            #expect(!(raw.components(separatedBy: "\r\n0\r\n").last ?? "").contains("99"), "\(raw)")
        }
    }

    @Test func nghttpAndH2loadMultiplexManyStreams() async throws {
        try await Self.withH2Gateway { _, clear, secure, _ in
            let (s1, nghttp) = try await onItsOwnThread {
                try runTool("/usr/bin/nghttp", ["-nsv", "-m", "20", "http://127.0.0.1:\(clear)/echo/n"])
            }
            #expect(s1 == 0, "\(nghttp)")
            #expect(nghttp.components(separatedBy: ":status: 200").count == 21, "\(nghttp.suffix(2000))")
            for url in ["https://127.0.0.2:\(secure)/load", "http://127.0.0.1:\(clear)/load"] {
                let (s2, load) = try await onItsOwnThread {
                    try runTool("/usr/bin/h2load", ["-n", "4000", "-c", "8", "-m", "10", url])
                }
                #expect(s2 == 0, "\(load)")
                #expect(load.contains("4000 succeeded, 0 failed, 0 errored"), "\(load)")
                #expect(load.contains("status codes: 4000 2xx"), "\(load)")
            }
            // A raw client's 50 streams at once, all answered.
            let seen = try await Self.attack(clear, "many-streams", "50")
            #expect(seen.statuses.count == 50 && seen.statuses.values.allSatisfy { $0 == 200 }, "\(seen)")
            #expect(seen.goaway == nil)
        }
    }

    @Test(arguments: [
        // CVE-2023-44487: streams opened and cancelled at once.
        ("rapid-reset", 11),
        // CVE-2024-27316: a header block that never ends.
        ("continuation-flood", 11),
        ("settings-flood", 11),
        ("ping-flood", 11),
        ("empty-data-flood", 11),
        // A block that decodes to far more than SETTINGS_MAX_HEADER_LIST_SIZE: COMPRESSION_ERROR.
        ("hpack-bomb", 9),
        // Past SETTINGS_MAX_CONCURRENT_STREAMS at once: PROTOCOL_ERROR.
        ("too-many-streams", 1),
    ])
    func anAbusiveConnectionIsClosedWithGOAWAYAndOthersDoNotNotice(attack: String, code: Int) async throws {
        try await Self.withH2Gateway { _, clear, _, _ in
            let seen = try await Self.attack(clear, attack)
            #expect(seen.goaway == code, "\(attack): \(seen)")
            try await Self.stillServes(clear)
        }
    }

    @Test func streamsPastTheLimitBeforeTheSettingsArriveAreRefusedNotFatal() async throws {
        try await Self.withH2Gateway { _, clear, _, _ in
            // 150 streams sent with the preface, before the client can know the limit of 100:
            // those past it are refused (REFUSED_STREAM, safe to retry), the rest answered.
            let seen = try await Self.attack(clear, "too-many-streams-early")
            #expect(seen.goaway == nil, "\(seen)")
            #expect(seen.resets.count == 50 && seen.resets.values.allSatisfy { $0 == 7 }, "\(seen)")
            #expect(seen.statuses.count == 100, "\(seen)")
        }
    }

    /// RFC 9113's rules for what a client sends, the cases of h2spec's kind: each on a
    /// connection of its own, with the error the RFC names (GOAWAY for a connection error,
    /// RST_STREAM for a stream error).
    @Test func framesThatBreakTheProtocolGetTheErrorsRFC9113Names() async throws {
        try await Self.withH2Gateway { _, clear, _, _ in
            let (status, output) = try await onItsOwnThread {
                try runTool(WebSocketTests.python, [Self.attackScript, String(clear), "conformance"])
            }
            #expect(status == 0, "\(output)")
            let seen = try JSONDecoder().decode([String: Seen].self, from: Data(output.utf8))
            let connectionErrors: [String: Int] = [
                "data-on-idle-stream": 1, "window-update-zero": 1, "window-overflow": 3, "oversized-frame": 6,
                "bad-initial-window": 3, "bad-max-frame-size": 1, "settings-ack-with-payload": 6,
                "headers-on-stream-zero": 1, "even-stream": 1, "push-promise": 1, "continuation-interleaved": 1,
                "continuation-without-headers": 1, "bad-padding": 1, "headers-after-client-reset": 5, "lower-stream-id": 1,
            ]
            for (name, code) in connectionErrors {
                #expect(seen[name]?.goaway == code, "\(name): \(String(describing: seen[name]))")
            }
            // Not the preface on an h2c listener: an HTTP/1.1 client, answered as one.
            #expect(seen["bad-preface"]?.fields["0"]?["answer"]?.hasPrefix("HTTP/1.1 505") == true, "\(String(describing: seen["bad-preface"]))")
            #expect(seen["data-after-end-stream"]?.resets["1"] == 5, "\(String(describing: seen["data-after-end-stream"]))")
            // A head past max_header_bytes (16 KB) but not a bomb: 431, as over HTTP/1.1, and
            // the connection goes on.
            let big = seen["head-past-the-limit"]
            #expect(big?.statuses == ["1": 431, "3": 200] && big?.goaway == nil, "\(String(describing: big))")
            // A stream error ends that stream; a request behind it in the same read is served.
            let after = seen["stream-error-then-request"]
            #expect(after?.resets["3"] == 6 && after?.statuses["5"] == 200 && after?.goaway == nil, "\(String(describing: after))")
            for name in ["pseudo-field-in-trailers", "trailers-without-end-stream"] {
                #expect(seen[name]?.resets["1"] == 1 && seen[name]?.goaway == nil, "\(name): \(String(describing: seen[name]))")
            }
            #expect(seen["priority-on-itself"]?.resets["3"] == 1, "\(String(describing: seen["priority-on-itself"]))")
            #expect(seen["ping-echo"]?.pong == "abcdefgh", "\(String(describing: seen["ping-echo"]))")
            #expect(seen["padded-request"]?.statuses["1"] == 200, "\(String(describing: seen["padded-request"]))")
            let small = seen["small-windows"]
            #expect(small?.data["1"] == 100_000 && small?.ended.contains(1) == true, "\(String(describing: small))")
            let shrunk = seen["shrunk-window"]
            #expect(shrunk?.fields["1"]?["before"] == "65535", "\(String(describing: shrunk))")
            #expect(shrunk?.data["1"] == 100_000 && shrunk?.ended.contains(1) == true && shrunk?.goaway == nil, "\(String(describing: shrunk))")
            try await Self.stillServes(clear)
        }
    }

    /// A client that keeps asking and reads nothing is not read either once its socket is
    /// full: its answers would otherwise pile up in the gateway's memory (3000 answers of 20 KB).
    @Test func aClientThatReadsNothingStopsBeingRead() async throws {
        try await Self.withH2Gateway(extra: "admin: { address: 127.0.0.1:0 }") { gw, clear, _, _ in
            _ = try await Self.attack(clear, "no-reads", "3000")
            let page = try await MetricsTests.admin(gw, "/metrics")
            let served = MetricsTests.value(MetricsTests.samples(page.text), "moongate_requests_total", ["route": "all", "method": "GET", "status": "200"]) ?? 0
            #expect(served < 600, "\(served)")  // about 200: what the kernel buffers hold
            try await Self.stillServes(clear)
        }
    }

    @Test func aBodyLongerThanItsLengthIsRefusedNotSmuggled() async throws {
        try await Self.withH2Gateway { gw, clear, _, _ in
            let seen = try await Self.attack(clear, "length-mismatch")
            #expect(seen.resets["1"] == 1, "\(seen)")  // PROTOCOL_ERROR
            #expect(seen.statuses["3"] == 200, "\(seen)")
            #expect(seen.statuses.count == 1, "\(seen)")
        }
    }

    @Test func streamsThatStallAreEndedByTheTimeouts() async throws {
        try await Self.withH2Gateway { _, clear, _, _ in
            // Requests that never finish: answered 504 when the request timeout (4 s) passes
            // and their streams closed.
            let never = try await Self.attack(clear, "never-ending")
            #expect(never.statuses.count == 10 && never.statuses.values.allSatisfy { $0 == 504 }, "\(never)")
            #expect(never.resets.count == 10, "\(never)")
            #expect(never.seconds < 10, "\(never)")
            // A client that grants no window: its stream is reset rather than held open.
            let stalled = try await Self.attack(clear, "zero-window", "/bytes/10000000")
            #expect(stalled.resets["1"] != nil, "\(stalled)")
            #expect((stalled.data["1"] ?? 0) == 0)
            #expect(stalled.seconds < 10, "\(stalled)")
            try await Self.stillServes(clear)
        }
    }

    @Test func malformedBlocksAreRefusedAsStreamErrors() async throws {
        try await Self.withH2Gateway { _, clear, _, _ in
            // nghttp lets a test send fields an HTTP/2 request must not carry.
            for header in ["connection: close", "transfer-encoding: chunked", "te: gzip", "upgrade: h2c"] {
                let (_, output) = try await onItsOwnThread {
                    try runTool("/usr/bin/nghttp", ["-nv", "-H", header, "http://127.0.0.1:\(clear)/m"])
                }
                #expect(output.contains("RST_STREAM") && output.contains("PROTOCOL_ERROR"), "\(header): \(output.suffix(1500))")
                #expect(!output.contains(":status: 200"), "\(header)")
            }
            try await Self.stillServes(clear)
        }
    }

    @Test func drainSendsGOAWAYAndStreamsInFlightFinish() async throws {
        let certs = try MadeCertificates()
        try certs.make("api", subject: "api.example.com", altNames: ["api.example.com"])
        let gw = try await TestGateway.start(Self.config(certs), scripts: ["key.lua": Self.keyPolicy])
        let clear = await gw.gateway.boundPorts()["clear"]!
        // A request that takes 1.5 s, and shutdown while it runs.
        async let slow = onItsOwnThread {
            try runTool("/usr/bin/nghttp", ["-nv", "http://127.0.0.1:\(clear)/delay/1500"])
        }
        try await Task.sleep(for: .milliseconds(500))
        await gw.stop()
        let (status, output) = try await slow
        #expect(status == 0, "\(output)")
        #expect(output.contains("recv GOAWAY") && output.contains("NO_ERROR"), "\(output)")
        #expect(output.contains(":status: 200"), "\(output)")
        #expect(output.contains("END_STREAM"), "\(output)")
    }

    @Test func aListenerRemovedByAReloadSendsGOAWAYAndItsStreamsFinish() async throws {
        let certs = try MadeCertificates()
        try certs.make("api", subject: "api.example.com", altNames: ["api.example.com"])
        try await withGateway(Self.config(certs), scripts: ["key.lua": Self.keyPolicy]) { gw in
            let clear = await gw.gateway.boundPorts()["clear"]!
            async let slow = onItsOwnThread {
                try runTool("/usr/bin/nghttp", ["-nv", "http://127.0.0.1:\(clear)/delay/1500"])
            }
            try await Task.sleep(for: .milliseconds(500))
            let without = Self.config(certs).replacingOccurrences(of: "  - name: clear\n    address: 127.0.0.1:0\n    h2c: true\n", with: "")
            #expect(without != Self.config(certs))
            let result = try await gw.rewrite(without)
            #expect(result.succeeded, "\(result.errors)")
            let (status, output) = try await slow
            #expect(status == 0, "\(output)")
            #expect(output.contains("recv GOAWAY") && output.contains("NO_ERROR"), "\(output)")
            #expect(output.contains(":status: 200"), "\(output)")
        }
    }

    @Test func aTLSListenerWithHTTP2OffOffersOnlyHTTP1() async throws {
        let certs = try MadeCertificates()
        try certs.make("api", subject: "api.example.com", altNames: ["api.example.com"])
        let roots = try certs.roots(["api"])
        let yaml = """
            listeners:
              - name: secure
                address: 127.0.0.1:@PORT@
                http2: false
                tls:
                  certificates: [ { cert: \(certs.path)/api.pem, key: \(certs.path)/api.key } ]
            upstreams:
              echo:
                targets: [ "@ECHO@" ]
            routes:
              - name: all
                match: { path_prefix: / }
                upstream: echo
            """
        try await withGateway(yaml) { gw in
            let (_, output) = try await Self.curl(["-v"] + Self.tls(gw.port, roots, "/x", host: "127.0.0.1"))
            #expect(output.contains("ALPN: server accepted http/1.1"), "\(output)")
            #expect(output.contains("< HTTP/1.1 200"), "\(output)")
        }
    }
}
