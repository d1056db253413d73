import Foundation
import TestSupport
import Testing

/// gRPC calls through the gateway with Python's grpcio client (PyPI): the errors the gateway
/// makes itself reach the client as gRPC statuses, a policy sees the call's service and method
/// (`request.grpc()`), and the caller's deadline (`grpc-timeout`) bounds the request.
/// Calls reach a grpcio server through an `protocol: h2` upstream: unary, server, client and
/// bidirectional streaming, statuses and trailers from the server, deadlines, a server killed
/// mid-stream, retries only where a route marks the method.
@Suite(.serialized) struct GRPCTests {
    static let config = """
        listeners:
          - name: clear
            address: 127.0.0.1:@PORT@
            h2c: true
        timeouts:
          request: 30s
        upstreams:
          echo:
            targets: [ "@ECHO@" ]
          dead:
            targets: [ "127.0.0.1:1" ]
        routes:
          - name: greeter
            match: { path_prefix: /demo.Greeter/ }
            upstream: echo
            policy: greeter.lua
          - name: down
            match: { path_prefix: /demo.Down/ }
            upstream: dead
          - name: slow
            match: { path_prefix: /demo.Slow/ }
            upstream: echo
            policy: slow.lua
        """

    static let scripts = [
        "greeter.lua": """
            return {
              access = function(ctx)
                local service, method = request.grpc()
                if service ~= "demo.Greeter" then request.respond(500, "not gRPC") end
                if request.header("x-api-key") ~= "sesame" then request.respond(401, "who are you? ünïcode") end
                if method ~= "SayHello" then request.respond(403, "only SayHello") end
                request.respond(429, "slow down")
              end,
            }
            """,
        // The echo upstream answers /delay/MS after MS milliseconds.
        "slow.lua": """
            return { access = function(ctx) request.set_path("/delay/5000") end }
            """,
    ]

    /// A unary call with grpcio: prints the status code's name and the details.
    static let client = """
        import grpc, sys
        port, path = sys.argv[1], sys.argv[2]
        metadata = [tuple(m.split("=", 1)) for m in sys.argv[3:]]
        channel = grpc.insecure_channel("127.0.0.1:" + port)
        call = channel.unary_unary(path, request_serializer=None, response_deserializer=None)
        try:
            call(b"hello", timeout=10, metadata=metadata)
            print("OK")
        except grpc.RpcError as e:
            print(e.code().name + "|" + (e.details() or ""))
        """

    static func call(_ port: Int, _ path: String, _ metadata: [String] = []) async throws -> String {
        let (status, output) = try await onItsOwnThread {
            try runTool(WebSocketTests.python, ["-c", client, "\(port)", path] + metadata)
        }
        #expect(status == 0, "\(output)")
        return output.trimmingCharacters(in: .whitespacesAndNewlines)
    }

    /// A grpcio server (demo.Greeter) on `port`, until the process is terminated.
    static let server = """
        import grpc, sys, time
        from concurrent import futures
        port = sys.argv[1]
        def hello(req, ctx): return b"hello " + req
        def count(req, ctx):
            for i in range(int(req or b"3")):
                if i >= 5: time.sleep(0.05)
                yield b"n%d" % i
        def total(reqs, ctx): return b"%d" % sum(len(r) for r in reqs)
        def chat(reqs, ctx):
            for r in reqs: yield b"echo " + r
        def fail(req, ctx): ctx.abort(grpc.StatusCode.NOT_FOUND, "nope")
        def slow(req, ctx):
            time.sleep(3)
            return b"late"
        def trailing(req, ctx):
            ctx.set_trailing_metadata((("x-served-by", "python"),))
            return b"ok"
        h = grpc.method_handlers_generic_handler("demo.Greeter", {
            "SayHello": grpc.unary_unary_rpc_method_handler(hello),
            "Count": grpc.unary_stream_rpc_method_handler(count),
            "Total": grpc.stream_unary_rpc_method_handler(total),
            "Chat": grpc.stream_stream_rpc_method_handler(chat),
            "Fail": grpc.unary_unary_rpc_method_handler(fail),
            "Slow": grpc.unary_unary_rpc_method_handler(slow),
            "Trailing": grpc.unary_unary_rpc_method_handler(trailing),
        })
        # No SO_REUSEPORT (grpcio's default): a port another test took must fail the bind,
        # not be shared with it.
        server = grpc.server(futures.ThreadPoolExecutor(max_workers=16), options=[("grpc.so_reuseport", 0)])
        server.add_generic_rpc_handlers((h,))
        if len(sys.argv) > 3:
            creds = grpc.ssl_server_credentials([(open(sys.argv[3], "rb").read(), open(sys.argv[2], "rb").read())])
            server.add_secure_port("127.0.0.1:" + port, creds)
        else:
            server.add_insecure_port("127.0.0.1:" + port)
        server.start()
        server.wait_for_termination()
        """

    /// Every kind of call, as JSON: each one's answer or "ERR CODE|details".
    static let calls = """
        import grpc, sys, json
        port = sys.argv[1]
        ch = grpc.insecure_channel("127.0.0.1:" + port)
        out = {}
        def call(name, fn):
            try: out[name] = fn()
            except grpc.RpcError as e: out[name] = "ERR " + e.code().name + "|" + (e.details() or "")
        raw = dict(request_serializer=None, response_deserializer=None)
        u = lambda m: ch.unary_unary("/demo.Greeter/" + m, **raw)
        call("unary", lambda: u("SayHello")(b"world", timeout=5).decode())
        call("server_stream", lambda: [m.decode() for m in ch.unary_stream("/demo.Greeter/Count", **raw)(b"5", timeout=5)])
        call("client_stream", lambda: ch.stream_unary("/demo.Greeter/Total", **raw)(iter([b"ab", b"cde", b"f" * 300000]), timeout=5).decode())
        call("bidi", lambda: [m.decode() for m in ch.stream_stream("/demo.Greeter/Chat", **raw)(iter([b"a", b"b", b"c"]), timeout=5)])
        call("fail", lambda: u("Fail")(b"", timeout=5))
        call("deadline", lambda: u("Slow")(b"", timeout=0.5))
        def trailing():
            resp, c = u("Trailing").with_call(b"", timeout=5)
            return resp.decode() + " " + dict(c.trailing_metadata()).get("x-served-by", "-")
        call("trailing", trailing)
        print(json.dumps(out))
        """

    static func upstreamConfig(_ grpcPort: Int, extraTarget: String = "", extraRoute: String = "", tls: String = "") -> String {
        """
        listeners:
          - name: clear
            address: 127.0.0.1:@PORT@
            h2c: true
        upstreams:
          grpc:
            targets: [ \(extraTarget)"127.0.0.1:\(grpcPort)" ]
            protocol: h2
            \(tls)
            balancer: round_robin
            passive_health: { failures: 1000 }
        routes:
        \(extraRoute)
          - name: greeter
            match: { path_prefix: /demo.Greeter/ }
            upstream: grpc
        """
    }

    /// Runs `body` with a grpcio server on a free port (over TLS with `tls`: certificate, key).
    static func withServer(tls: (String, String)? = nil, _ body: (Int, Process) async throws -> Void) async throws {
        // A free port may be taken by a parallel test before the server binds it: a few tries.
        var launched: (Int, Process)?
        for attempt in 1...3 where launched == nil {
            let port = try RawClient.freePort()
            do {
                launched = (port, try launchServer(WebSocketTests.python, ["-c", server, "\(port)"] + (tls.map { [$0.0, $0.1] } ?? []), port: port, name: "the grpcio server"))
            } catch where attempt < 3 {
                continue
            }
        }
        let (port, process) = try #require(launched)
        // SIGKILL: grpcio's server, blocked in wait_for_termination, outlives a SIGTERM.
        defer { kill(process.processIdentifier, SIGKILL) }
        try await body(port, process)
    }

    @Test func callsOfEveryKindReachAGRPCServerOverHTTP2() async throws {
        try await Self.withServer { grpcPort, _ in
            try await withGateway(Self.upstreamConfig(grpcPort)) { gw in
                let (status, output) = try await onItsOwnThread { try runTool(WebSocketTests.python, ["-c", Self.calls, "\(gw.port)"]) }
                #expect(status == 0, "\(output)")
                let seen = try JSONSerialization.jsonObject(with: Data(output.utf8)) as? [String: Any] ?? [:]
                #expect(seen["unary"] as? String == "hello world", "\(output)")
                #expect(seen["server_stream"] as? [String] == ["n0", "n1", "n2", "n3", "n4"], "\(output)")
                #expect(seen["client_stream"] as? String == "300005", "\(output)")
                #expect(seen["bidi"] as? [String] == ["echo a", "echo b", "echo c"], "\(output)")
                #expect(seen["fail"] as? String == "ERR NOT_FOUND|nope", "\(output)")
                #expect((seen["deadline"] as? String)?.hasPrefix("ERR DEADLINE_EXCEEDED") == true, "\(output)")
                #expect(seen["trailing"] as? String == "ok python", "\(output)")
            }
        }
    }

    @Test func anUpstreamOverTLSIsReachedWithALPNH2() async throws {
        let certs = try MadeCertificates()
        _ = try certs.makeCA("ca")
        let (cert, key) = try certs.make("origin", subject: "grpc.internal", altNames: ["grpc.internal"], signedBy: "ca")
        try await Self.withServer(tls: (cert, key)) { grpcPort, _ in
            let yaml = Self.upstreamConfig(grpcPort, tls: "tls: { sni: grpc.internal, ca_file: \(certs.path)/ca.pem }")
            try await withGateway(yaml) { gw in
                let (status, output) = try await onItsOwnThread { try runTool(WebSocketTests.python, ["-c", Self.calls, "\(gw.port)"]) }
                #expect(status == 0, "\(output)")
                let seen = try JSONSerialization.jsonObject(with: Data(output.utf8)) as? [String: Any] ?? [:]
                #expect(seen["unary"] as? String == "hello world", "\(output)")
                #expect(seen["bidi"] as? [String] == ["echo a", "echo b", "echo c"], "\(output)")
                #expect(seen["trailing"] as? String == "ok python", "\(output)")
            }
        }
    }

    static let longStream = """
        import grpc, sys
        ch = grpc.insecure_channel("127.0.0.1:" + sys.argv[1])
        got = 0
        try:
            for m in ch.unary_stream("/demo.Greeter/Count", request_serializer=None, response_deserializer=None)(b"1000", timeout=20):
                got += 1
                if got == 5: print("streaming", flush=True)
            print("OK", got)
        except grpc.RpcError as e:
            print("ERR " + e.code().name, got)
        """

    @Test func aServerKilledMidStreamEndsTheCallUnavailable() async throws {
        try await Self.withServer { grpcPort, server in
            try await withGateway(Self.upstreamConfig(grpcPort)) { gw in
                let client = Process()
                client.executableURL = URL(fileURLWithPath: WebSocketTests.python)
                client.arguments = ["-c", Self.longStream, "\(gw.port)"]
                let pipe = Pipe()
                client.standardOutput = pipe
                try client.run()
                // The stream is under way (5 messages, then one every 50 ms): kill the server.
                try await Task.sleep(for: .milliseconds(1200))
                kill(server.processIdentifier, SIGKILL)
                client.waitUntilExit()
                let output = String(decoding: pipe.fileHandleForReading.readDataToEndOfFile(), as: UTF8.self)
                #expect(output.contains("streaming"), "\(output)")
                #expect(output.contains("ERR UNAVAILABLE"), "\(output)")
            }
        }
    }

    @Test func retriesOnlyWhereARouteMarksTheMethodIdempotent() async throws {
        try await Self.withServer { grpcPort, _ in
            // Two targets, one refusing connections: a call sent there fails unless retried.
            let dead = "\"127.0.0.1:1\", "
            var failures = 0
            try await withGateway(Self.upstreamConfig(grpcPort, extraTarget: dead)) { gw in
                for _ in 0..<6 {
                    if try await Self.call(gw.port, "/demo.Greeter/SayHello") != "OK" { failures += 1 }
                }
            }
            #expect(failures > 0)
            let marked = """
                  - name: hello-idempotent
                    match: { path: /demo.Greeter/SayHello }
                    upstream: grpc
                    retry_non_idempotent: true
                """
            try await withGateway(Self.upstreamConfig(grpcPort, extraTarget: dead, extraRoute: marked)) { gw in
                for _ in 0..<6 {
                    let answer = try await Self.call(gw.port, "/demo.Greeter/SayHello")
                    #expect(answer == "OK")
                }
            }
        }
    }

    @Test func errorsTheGatewayMakesAreGRPCStatuses() async throws {
        try await withGateway(Self.config, scripts: Self.scripts) { gw in
            #expect(try await Self.call(gw.port, "/demo.Greeter/SayHello") == "UNAUTHENTICATED|who are you? ünïcode")
            #expect(try await Self.call(gw.port, "/demo.Greeter/Other", ["x-api-key=sesame"]) == "PERMISSION_DENIED|only SayHello")
            #expect(try await Self.call(gw.port, "/demo.Greeter/SayHello", ["x-api-key=sesame"]) == "RESOURCE_EXHAUSTED|slow down")
            let down = try await Self.call(gw.port, "/demo.Down/Call")
            #expect(down.hasPrefix("UNAVAILABLE|"), "\(down)")
            let unrouted = try await Self.call(gw.port, "/nowhere.Service/Call")
            #expect(unrouted.hasPrefix("UNIMPLEMENTED|"), "\(unrouted)")
        }
    }

    @Test func theCallersDeadlineBoundsTheRequest() async throws {
        try await withGateway(Self.config, scripts: Self.scripts) { gw in
            // grpc-timeout 500m against an upstream that answers after 5 s and a request
            // timeout of 30 s: DEADLINE_EXCEEDED from the gateway, about half a second in.
            let seen = try await HTTP2Tests.attack(gw.port, "grpc-deadline")
            #expect(seen.fields["1"]?["grpc-status"] == "4", "\(seen)")
            #expect(seen.fields["1"]?[":status"] == "200", "\(seen)")
            #expect(seen.seconds < 3, "\(seen)")
        }
    }
}
