import NIOCore
import Telemetry

/// OTLP/HTTP's binary encoding of spans: an `ExportTraceServiceRequest` in protobuf's wire
/// format (opentelemetry-proto, `trace/v1/trace.proto`), written from the field numbers of
/// the specification. The collectors' default encoding.
///
/// Hand-written rather than swift-protobuf: the message is fixed, the writer is a page, and
/// generated code would need the protobuf compiler and its runtime in the build for it.
/// `OTLPEncodingTests` proves it equal to the JSON encoding through the official definitions.
enum OTLPProtobuf {
    static func write(_ spans: [RecordedSpan], serviceName: String, into out: inout ByteBuffer) {
        var scope = Writer()
        scope.message(1) { $0.string(1, "moongate") }  // InstrumentationScope.name
        for span in spans { scope.message(2) { write(span, &$0) } }  // ScopeSpans.spans

        var resource = Writer()
        resource.message(1) { r in  // ResourceSpans.resource
            r.message(1) { attribute(&$0, "service.name", string: serviceName) }  // Resource.attributes
        }
        resource.bytes(2, scope.bytes)  // ResourceSpans.scope_spans

        var request = Writer()
        request.bytes(1, resource.bytes)  // ExportTraceServiceRequest.resource_spans
        out.writeBytes(request.bytes)
    }

    private static func write(_ s: RecordedSpan, _ w: inout Writer) {
        var traceID = [UInt8](repeating: 0, count: 16)
        for i in 0..<8 {
            traceID[i] = UInt8(truncatingIfNeeded: s.traceHigh >> (56 - 8 * i))
            traceID[8 + i] = UInt8(truncatingIfNeeded: s.traceLow >> (56 - 8 * i))
        }
        w.bytes(1, traceID)
        w.bytes(2, bigEndian(s.spanID))
        if s.parentID != 0 { w.bytes(4, bigEndian(s.parentID)) }
        let method = MethodLabel.names[s.method]
        // The same name the JSON encoding gives: "{method} {route}" for the request's span.
        var name = method == "OTHER" ? "HTTP" : method
        if s.server, !s.route.isEmpty { name += " " + String(decoding: s.route.map { $0 < 0x20 || $0 == 0x7F ? UInt8(ascii: "?") : $0 }, as: UTF8.self) }
        w.string(5, name)
        w.varint(6, s.server ? 2 : 3)  // SPAN_KIND_SERVER, SPAN_KIND_CLIENT
        w.fixed64(7, UInt64(max(s.startNanoseconds, 0)))
        w.fixed64(8, UInt64(max(s.endNanoseconds, s.startNanoseconds, 0)))
        func add(_ key: String, string value: [UInt8]) { w.message(9) { attribute(&$0, key, string: String(decoding: value, as: UTF8.self)) } }
        func add(_ key: String, int value: Int) { w.message(9) { attribute(&$0, key, int: value) } }
        w.message(9) { attribute(&$0, "http.request.method", string: method == "OTHER" ? "_OTHER" : method) }
        if s.server {
            if !s.route.isEmpty { add("http.route", string: s.route) }
            add("url.path", string: s.path)
            if let id = s.requestID { add("moongate.request_id", string: Array(id.readableBytesView)) }
        } else {
            add("moongate.try", int: s.tryNumber)
            let t = s.target
            if let colon = t.lastIndex(of: UInt8(ascii: ":")), let port = Int(String(decoding: t[(colon + 1)...], as: UTF8.self)) {
                add("server.address", string: Array(t[..<colon]))
                add("server.port", int: port)
            }
        }
        if !s.upstream.isEmpty { add("moongate.upstream", string: s.upstream) }
        if s.server, !s.target.isEmpty { add("moongate.target", string: s.target) }
        if s.status > 0 { add("http.response.status_code", int: s.status) }
        if let error = s.error { add("error.type", string: Array(error.utf8)) }
        let failed = s.error != nil || s.status >= 500 || (!s.server && s.status == 0)
        // Status: STATUS_CODE_ERROR, or an empty status (UNSET) as the JSON encoding sends.
        w.message(15) { if failed { $0.varint(3, 2) } }
    }

    /// A `KeyValue` whose value is an `AnyValue`.
    private static func attribute(_ w: inout Writer, _ key: String, string value: String) {
        w.string(1, key)
        w.message(2) { $0.string(1, value) }
    }

    private static func attribute(_ w: inout Writer, _ key: String, int value: Int) {
        w.string(1, key)
        w.message(2) { $0.varint(3, UInt64(bitPattern: Int64(value))) }
    }

    private static func bigEndian(_ v: UInt64) -> [UInt8] {
        (0..<8).map { UInt8(truncatingIfNeeded: v >> (56 - 8 * $0)) }
    }

    /// Protobuf's wire format: tags, varints, fixed64s, length-delimited fields. A nested
    /// message is written apart and then copied in after its length (exports are off the
    /// request path, once a second).
    struct Writer {
        private(set) var bytes: [UInt8] = []

        private mutating func raw(_ v: UInt64) {
            var v = v
            while v >= 0x80 {
                bytes.append(UInt8(v & 0x7F) | 0x80)
                v >>= 7
            }
            bytes.append(UInt8(v))
        }

        private mutating func tag(_ field: Int, _ wireType: UInt64) { raw(UInt64(field) << 3 | wireType) }

        mutating func varint(_ field: Int, _ v: UInt64) {
            tag(field, 0)
            raw(v)
        }

        mutating func fixed64(_ field: Int, _ v: UInt64) {
            tag(field, 1)
            for i in 0..<8 { bytes.append(UInt8(truncatingIfNeeded: v >> (8 * i))) }
        }

        mutating func bytes(_ field: Int, _ value: [UInt8]) {
            tag(field, 2)
            raw(UInt64(value.count))
            bytes += value
        }

        mutating func string(_ field: Int, _ value: String) { bytes(field, Array(value.utf8)) }

        mutating func message(_ field: Int, _ body: (inout Writer) -> Void) {
            var inner = Writer()
            body(&inner)
            bytes(field, inner.bytes)
        }
    }
}
