import Foundation
import Telemetry
import TestSupport
import Testing

/// Spans exported by OTLP/HTTP to a local receiver: a real HTTP server on loopback that
/// keeps what it is sent (no OpenTelemetry collector ships in Debian; the receiver checks
/// what a collector would parse: OTLP's JSON encoding).
@Suite struct TracingTests {
    /// `encoding`: the `tracing:` lines that choose it (the JSON tests read bodies as JSON).
    static func config(collector: Int, encoding: String = "  protocol: http/json\n  compression: none") -> String {
        """
        listeners:
          - name: main
            address: 127.0.0.1:@PORT@
        tracing:
          endpoint: http://127.0.0.1:\(collector)
          service_name: gateway-under-test
        \(encoding)
        upstreams:
          flaky:
            # Nothing listens on port 1: the first try there fails and the request goes on.
            targets: [ "127.0.0.1:1", "@ECHO@" ]
            retries: 1
        routes:
          - name: api
            match: { path_prefix: / }
            upstream: flaky
        """
    }

    typealias Span = [String: Any]

    static func spans(_ requests: [TestHTTPServer.Request]) -> [Span] {
        var out: [Span] = []
        for request in requests {
            guard let body = try? JSONSerialization.jsonObject(with: Data(request.body)) as? [String: Any],
                let resources = body["resourceSpans"] as? [[String: Any]]
            else { continue }
            for resource in resources {
                for scope in resource["scopeSpans"] as? [[String: Any]] ?? [] {
                    out += scope["spans"] as? [Span] ?? []
                }
            }
        }
        return out
    }

    static func attributes(_ span: Span) -> [String: String] {
        var out: [String: String] = [:]
        for a in span["attributes"] as? [[String: Any]] ?? [] {
            guard let key = a["key"] as? String, let value = a["value"] as? [String: Any] else { continue }
            out[key] = (value["stringValue"] as? String) ?? (value["intValue"] as? String)
        }
        return out
    }

    @Test func aSpanPerRequestAndAChildPerTryArriveAtTheCollector() async throws {
        let collector = try await TestHTTPServer { _ in .init(status: 200, body: "{}") }
        defer { Task { await collector.stop() } }
        try await withGateway(Self.config(collector: collector.port), workers: 1) { gw in
            let traceID = "4bf92f3577b34da6a3ce929d0e0e4736"
            // Round robin over two targets: of four requests, some try the dead target first.
            var forwarded: [String] = []
            for _ in 0..<4 {
                let response = try gw.client().request("GET", "/orders/7?x=1", headers: [("traceparent", "00-\(traceID)-00f067aa0ba902b7-01")])
                #expect(response.status == 200)
                forwarded += response.echoed("traceparent")
            }
            var spans: [Span] = []
            let arrived = await eventually {
                spans = Self.spans(collector.requests)
                return spans.filter { $0["kind"] as? Int == 2 }.count == 4
            }
            #expect(arrived, "\(spans)")
            let request = collector.requests.first
            #expect(request?.method == "POST" && request?.uri == "/v1/traces")
            #expect(request?.header("content-type") == "application/json")
            let body = (try? JSONSerialization.jsonObject(with: Data(request?.body ?? []))) as? [String: Any]
            #expect("\(body ?? [:])".contains("gateway-under-test"))

            let servers = spans.filter { $0["kind"] as? Int == 2 }
            let tries = spans.filter { $0["kind"] as? Int == 3 }
            for server in servers {
                #expect(server["traceId"] as? String == traceID)
                #expect(server["parentSpanId"] as? String == "00f067aa0ba902b7")
                #expect(server["name"] as? String == "GET api")
                let a = Self.attributes(server)
                #expect(a["http.route"] == "api" && a["http.request.method"] == "GET" && a["url.path"] == "/orders/7")
                #expect(a["http.response.status_code"] == "200" && a["moongate.upstream"] == "flaky")
                let start = Int(server["startTimeUnixNano"] as? String ?? "") ?? 0
                let end = Int(server["endTimeUnixNano"] as? String ?? "") ?? 0
                #expect(start > 1_700_000_000_000_000_000 && end >= start)
                // Each try is the request span's child; the answered one is what the upstream saw as its parent.
                let children = tries.filter { $0["parentSpanId"] as? String == server["spanId"] as? String }
                #expect(children.count >= 1)
                let answered = children.filter { Self.attributes($0)["http.response.status_code"] == "200" }
                #expect(answered.count == 1)
                if let id = answered.first?["spanId"] as? String {
                    #expect(forwarded.contains("00-\(traceID)-\(id)-01"), "\(forwarded) vs \(id)")
                }
            }
            // The dead target's tries: failed, with why, and retried to the other target.
            let failed = tries.filter { Self.attributes($0)["server.port"] == "1" }
            #expect(!failed.isEmpty)
            for span in failed {
                #expect((span["status"] as? [String: Any])?["code"] as? Int == 2)
                #expect(Self.attributes(span)["error.type"] != nil)
            }
            #expect(tries.count == 4 + failed.count)

            // Every export decodes with the official OTLP definitions (opentelemetry-proto,
            // PyPI), strictly: an unknown field or a wrong type fails the parse.
            let files = try collector.requests.map { request in
                let path = NSTemporaryDirectory() + "moongate-otlp-\(UUID().uuidString).json"
                try Data(request.body).write(to: URL(fileURLWithPath: path))
                return path
            }
            defer { for file in files { try? FileManager.default.removeItem(atPath: file) } }
            let (status, output) = try await onItsOwnThread { try runTool(WebSocketTests.python, ["-c", Self.strictOTLP] + files) }
            #expect(status == 0, "\(output)")
            #expect(output.contains("spans \(spans.count)"), "\(output)")
        }
    }

    /// Parses each file as an `ExportTraceServiceRequest` in OTLP/JSON (IDs are hex there, not
    /// proto3 JSON's base64: checked apart) and prints how many spans they held.
    static let strictOTLP = """
        import json, re, sys
        from google.protobuf import json_format
        from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
        total = 0
        for path in sys.argv[1:]:
            text = open(path).read()
            document = json.loads(text)
            for rs in document["resourceSpans"]:
                for ss in rs["scopeSpans"]:
                    for span in ss["spans"]:
                        assert re.fullmatch("[0-9a-f]{32}", span["traceId"]), span["traceId"]
                        assert re.fullmatch("[0-9a-f]{16}", span["spanId"]), span["spanId"]
                        if "parentSpanId" in span:
                            assert re.fullmatch("[0-9a-f]{16}|", span["parentSpanId"]), span["parentSpanId"]
            message = json_format.Parse(text, ExportTraceServiceRequest(), ignore_unknown_fields=False)
            total += sum(len(ss.spans) for rs in message.resource_spans for ss in rs.scope_spans)
        print("spans", total)
        """

    @Test func aCallerThatDoesNotSampleIsNotRecorded() async throws {
        let collector = try await TestHTTPServer { _ in .init(status: 200, body: "{}") }
        defer { Task { await collector.stop() } }
        try await withGateway(Self.config(collector: collector.port), workers: 1) { gw in
            let response = try gw.client().request("GET", "/x", headers: [("traceparent", "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-00")])
            #expect(response.status == 200)
            // The flag travels on, unsampled.
            #expect(response.echoed("traceparent").first?.hasSuffix("-00") == true)
            let sampled = try gw.client().request("GET", "/x")
            #expect(sampled.status == 200)
            var spans: [Span] = []
            _ = await eventually { spans = Self.spans(collector.requests); return !spans.isEmpty }
            try await Task.sleep(for: .milliseconds(1200))
            spans = Self.spans(collector.requests)
            #expect(!spans.isEmpty)
            #expect(!spans.contains { $0["traceId"] as? String == "4bf92f3577b34da6a3ce929d0e0e4736" })
        }
    }

    /// The default: OTLP's protobuf encoding, gzipped, on one kept-alive connection across
    /// exports; decoded here with the official definitions.
    @Test func protobufGzippedOnAKeptAliveConnection() async throws {
        let collector = try await TestHTTPServer(keepAlive: true) { _ in .init(status: 200, body: "") }
        defer { Task { await collector.stop() } }
        try await withGateway(Self.config(collector: collector.port, encoding: ""), workers: 1) { gw in
            // Two exports at least (a batch a second).
            for round in 0..<2 {
                for _ in 0..<3 { #expect(try gw.client().request("GET", "/r\(round)").status == 200) }
                let expected = round + 1
                #expect(await eventually { collector.requests.count >= expected })
            }
            // Each request: its span and one try or two (the first target is dead only on some);
            // a round's spans may go out over more than one export.
            // One decoder run over every export so far (a process per poll, not per export:
            // the suite runs many tests at once).
            func decoded() async throws -> [String] {
                let files = try collector.requests.map { request in
                    let path = NSTemporaryDirectory() + "moongate-otlp-\(UUID().uuidString).pb.gz"
                    try Data(request.body).write(to: URL(fileURLWithPath: path))
                    return path
                }
                defer { for file in files { try? FileManager.default.removeItem(atPath: file) } }
                let (status, output) = try await onItsOwnThread { try runTool(WebSocketTests.python, ["-c", Self.decodeProtobuf] + files) }
                #expect(status == 0, "\(output)")
                return output.split(separator: "\n").map(String.init)
            }
            func total(_ counts: [String]) -> Int {
                counts.compactMap { Int($0.split(separator: " ").last ?? "") }.reduce(0, +)
            }
            var counts: [String] = []
            for _ in 0..<40 {
                counts = try await decoded()
                if total(counts) >= 12 { break }
                try await Task.sleep(for: .milliseconds(500))
            }
            #expect(total(counts) >= 12, "\(counts)")
            let requests = collector.requests
            #expect(requests.allSatisfy { $0.header("content-type") == "application/x-protobuf" && $0.header("content-encoding") == "gzip" })
            #expect(collector.connections == 1, "exports reuse the connection")
            #expect(counts.allSatisfy { $0.contains("service gateway-under-test") }, "\(counts)")
        }
    }

    /// A line per file: the service name and how many spans the export held.
    static let decodeProtobuf = """
        import gzip, sys
        from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
        for path in sys.argv[1:]:
            message = ExportTraceServiceRequest()
            message.ParseFromString(gzip.decompress(open(path, "rb").read()))
            rs = message.resource_spans[0]
            service = [a.value.string_value for a in rs.resource.attributes if a.key == "service.name"][0]
            spans = [s for ss in rs.scope_spans for s in ss.spans]
            assert all(len(s.trace_id) == 16 and len(s.span_id) == 8 for s in spans)
            print("service", service, "spans", len(spans))
        """

    /// A collector that answers `503` (with `Retry-After`) or `429` gets the same export again;
    /// one that answers `400` does not (the spans are dropped and counted).
    @Test func retriesWhatTheCollectorAsksToRetryAndNothingElse() async throws {
        let answers = Answers([.init(status: 503, headers: [("Retry-After", "0")]), .init(status: 429), .init(status: 200)])
        let collector = try await TestHTTPServer(keepAlive: true) { _ in answers.next() }
        defer { Task { await collector.stop() } }
        try await withGateway(Self.config(collector: collector.port), workers: 1) { gw in
            #expect(try gw.client().request("GET", "/once").status == 200)
            // 503 → at once (Retry-After: 0), 429 → after 2 s of back-off, then 200.
            #expect(await eventually(within: 15) { collector.requests.count >= 3 })
            let bodies = collector.requests.prefix(3).map(\.body)
            #expect(Set(bodies).count == 1, "the same export each time")
            try await Task.sleep(for: .milliseconds(1500))
            #expect(collector.requests.count == 3)
            let metrics = await gw.gateway.metricsText()
            #expect(!metrics.contains("moongate_trace_spans_dropped_total 1") && !metrics.contains("moongate_trace_spans_dropped_total 2"), "\(metrics)")

            answers.set([.init(status: 400)])
            #expect(try gw.client().request("GET", "/twice").status == 200)
            #expect(await eventually { collector.requests.count >= 4 })
            try await Task.sleep(for: .milliseconds(2500))
            #expect(collector.requests.count == 4, "a 400 is not retried")
            var dropped = false
            for _ in 0..<50 where !dropped {
                dropped = PrometheusText.parse(await gw.gateway.metricsText()).contains { $0.name == "moongate_trace_spans_dropped_total" && $0.value >= 1 }
                if !dropped { try await Task.sleep(for: .milliseconds(100)) }
            }
            #expect(dropped)
        }
    }

    /// Answers in turn, the last one forever after.
    final class Answers: @unchecked Sendable {
        private let lock = NSLock()
        private var queue: [TestHTTPServer.Answer]
        init(_ answers: [TestHTTPServer.Answer]) { queue = answers }
        func set(_ answers: [TestHTTPServer.Answer]) { lock.withLock { queue = answers } }
        func next() -> TestHTTPServer.Answer {
            lock.withLock { queue.count > 1 ? queue.removeFirst() : queue[0] }
        }
    }
}
