import Foundation
import Testing

/// The JSON access log and W3C trace context propagation.
@Suite struct AccessLogTests {
    static func config(logPath: String) -> String {
        """
        listeners:
          - name: main
            address: 127.0.0.1:@PORT@
        access_log:
          to: \(logPath)
        upstreams:
          echo:
            targets: [ "@ECHO@" ]
        routes:
          - name: tagged
            match: { path_prefix: /tagged/ }
            upstream: echo
            policy: tag.lua
          - name: api
            match: { path_prefix: / }
            upstream: echo
        """
    }

    static let tag = """
        return { access = function()
          log.field("plan", "gold")
          log.field("user_id", 42)
        end }
        """

    @Test func oneJSONLinePerRequestWithTheFields() async throws {
        let path = FileManager.default.temporaryDirectory.appendingPathComponent("access-\(UUID().uuidString).log").path
        defer { try? FileManager.default.removeItem(atPath: path) }
        try await withGateway(Self.config(logPath: path), scripts: ["tag.lua": Self.tag]) { gw in
            let a = try gw.client().request("GET", "/api/x?q=\"quoted\"", headers: [("X-Request-Id", "req-1")])
            #expect(a.status == 200)
            let b = try gw.client().request("POST", "/tagged/y", body: Array("hello".utf8))
            #expect(b.status == 200)
            var lines: [[String: Any]] = []
            let complete = await eventually {
                let text = (try? String(contentsOfFile: path, encoding: .utf8)) ?? ""
                lines = text.split(separator: "\n").compactMap {
                    (try? JSONSerialization.jsonObject(with: Data($0.utf8))) as? [String: Any]
                }
                return lines.count == 2 && text.split(separator: "\n").count == 2
            }
            #expect(complete, "\(lines)")
            guard lines.count == 2 else { return }
            let first = lines.first { $0["request_id"] as? String == "req-1" } ?? [:]
            #expect(first["route"] as? String == "api")
            #expect(first["method"] as? String == "GET")
            #expect(first["path"] as? String == "/api/x?q=\"quoted\"")
            #expect(first["status"] as? Int == 200)
            #expect((first["bytes_sent"] as? Int ?? 0) > 0)
            #expect((first["duration"] as? Double ?? -1) >= (first["upstream_duration"] as? Double ?? 0))
            #expect((first["upstream_duration"] as? Double ?? 0) > 0)
            #expect(first["upstream"] as? String == "127.0.0.1:\(gw.echoPort)")
            #expect(first["client"] as? String == "127.0.0.1")
            #expect((first["trace_id"] as? String)?.count == 32)
            #expect((first["time"] as? String)?.hasSuffix("Z") == true)
            let second = lines.first { $0["route"] as? String == "tagged" } ?? [:]
            #expect(second["bytes_received"] as? Int == 5)
            #expect((second["lua_duration"] as? Double ?? 0) > 0)
            let fields = second["fields"] as? [String: String] ?? [:]
            #expect(fields == ["plan": "gold", "user_id": "42"])
        }
    }

    @Test func traceparentReachesTheUpstreamWithTheSameTraceID() async throws {
        try await withGateway { gw in
            let incoming = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
            let kept = try gw.client().request("GET", "/x", headers: [("traceparent", incoming)])
            let forwarded = kept.echoedHeaders.filter { $0.0.lowercased() == "traceparent" }.map(\.1)
            #expect(forwarded.count == 1)
            let parts = forwarded.first?.split(separator: "-").map(String.init) ?? []
            #expect(parts.count == 4)
            guard parts.count == 4 else { return }
            #expect(parts[0] == "00" && parts[1] == "4bf92f3577b34da6a3ce929d0e0e4736" && parts[3] == "01")
            // The gateway is a hop: the upstream's parent is the gateway's span, not the client's.
            #expect(parts[2] != "00f067aa0ba902b7" && parts[2].count == 16)

            // None, or an invalid one (upper-case hex): a new trace starts.
            for headers in [[], [("traceparent", "00-4BF92F3577B34DA6A3CE929D0E0E4736-00F067AA0BA902B7-01")]] {
                let fresh = try gw.client().request("GET", "/x", headers: headers)
                let sent = fresh.echoedHeaders.filter { $0.0.lowercased() == "traceparent" }.map(\.1)
                #expect(sent.count == 1)
                let p = sent.first?.split(separator: "-").map(String.init) ?? []
                #expect(p.count == 4 && p[1].count == 32 && p[1] != "4bf92f3577b34da6a3ce929d0e0e4736" && p[3] == "01")
            }
        }
    }
}
