import Foundation
import NIOCore
import TestSupport
import Testing

@testable import Proxy

/// The two OTLP encodings of the same spans decode, through the official definitions
/// (opentelemetry-proto from PyPI, installed by scripts/test), to the same message: the
/// hand-written protobuf writer is checked against the JSON writer the collector tests
/// already hold to the specification.
struct OTLPEncodingTests {
    static var python: String { ProcessInfo.processInfo.environment["MOONGATE_PYTHON"] ?? "/usr/bin/python3" }

    static func spans() -> [RecordedSpan] {
        var out: [RecordedSpan] = []
        let routes: [String] = ["api", "", "ünïcode/路由", "quote\"back\\slash"]
        for i in 0..<24 {
            let server = i % 3 == 0
            out.append(
                RecordedSpan(
                    traceHigh: 0x4bf9_2f35_77b3_4da6 &+ UInt64(i), traceLow: UInt64.max - UInt64(i), spanID: 0x00f0_67aa_0ba9_02b7 &* UInt64(i + 1),
                    parentID: i % 4 == 0 ? 0 : UInt64(i) << 40, server: server,
                    startNanoseconds: 1_760_000_000_000_000_000 + Int64(i) * 1_000_123, endNanoseconds: 1_760_000_000_000_000_000 + Int64(i) * 2_000_777,
                    status: [200, 0, 503, 404, 101][i % 5], method: i % 9, route: Array(routes[i % routes.count].utf8),
                    path: Array("/orders/\(i)/ü%20x".utf8), upstream: i % 2 == 0 ? Array("flaky".utf8) : [],
                    target: i % 5 == 1 ? [] : Array("10.0.0.\(i):\(8000 + i)".utf8), tryNumber: i % 3 + 1,
                    error: i % 6 == 1 ? "connect: refused \"é\" \u{1}" : nil, requestID: i % 2 == 0 ? ByteBuffer(string: "req-\(i)") : nil))
        }
        return out
    }

    @Test func protobufAndJSONDecodeToTheSameMessage() async throws {
        let spans = Self.spans()
        var json = ByteBuffer()
        OTLPJSON.write(spans, serviceName: "svc \"ü\"", into: &json)
        var proto = ByteBuffer()
        OTLPProtobuf.write(spans, serviceName: "svc \"ü\"", into: &proto)
        let dir = NSTemporaryDirectory() + "moongate-otlp-\(UUID().uuidString)"
        try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(atPath: dir) }
        try Data(json.readableBytesView).write(to: URL(fileURLWithPath: dir + "/spans.json"))
        try Data(proto.readableBytesView).write(to: URL(fileURLWithPath: dir + "/spans.pb"))
        let (status, output) = try await onItsOwnThread { try runTool(Self.python, ["-c", Self.compare, dir + "/spans.json", dir + "/spans.pb"]) }
        #expect(status == 0, "\(output)")
        #expect(output.contains("equal \(spans.count) spans"), "\(output)")
    }

    /// OTLP/JSON carries IDs in hex where proto3's JSON mapping has base64: they are turned
    /// into base64 before the strict parse, then the two messages are compared whole.
    static let compare = """
        import base64, json, sys
        from google.protobuf import json_format
        from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
        document = json.load(open(sys.argv[1]))
        for rs in document["resourceSpans"]:
            for ss in rs["scopeSpans"]:
                for span in ss["spans"]:
                    for key in ("traceId", "spanId", "parentSpanId"):
                        if key in span:
                            span[key] = base64.b64encode(bytes.fromhex(span[key])).decode()
        from_json = json_format.Parse(json.dumps(document), ExportTraceServiceRequest(), ignore_unknown_fields=False)
        from_proto = ExportTraceServiceRequest()
        from_proto.ParseFromString(open(sys.argv[2], "rb").read())
        if from_json != from_proto:
            print("JSON:", from_json)
            print("protobuf:", from_proto)
            sys.exit(1)
        print("equal", sum(len(ss.spans) for rs in from_proto.resource_spans for ss in rs.scope_spans), "spans")
        """
}
