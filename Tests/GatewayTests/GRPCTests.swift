import Foundation
import TestSupport
import Testing

/// gRPC calls through the gateway with Python's grpcio client (PyPI): the errors the gateway
/// makes itself reach the client as gRPC statuses, a policy sees the call's service and method
/// (`request.grpc()`), and the caller's deadline (`grpc-timeout`) bounds the request.
/// (Calls served by a gRPC upstream need HTTP/2 upstreams, still to come in issue 22.)
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
