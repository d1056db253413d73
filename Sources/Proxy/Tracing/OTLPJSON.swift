import NIOCore
import Telemetry

/// OTLP/HTTP's JSON encoding of spans (opentelemetry-proto `ExportTraceServiceRequest`; ids
/// in hex, 64-bit integers as strings, as the OTLP specification's JSON mapping says).
enum OTLPJSON {
    static func write(_ spans: [RecordedSpan], serviceName: String, into out: inout ByteBuffer) {
        out.writeHead(estimate: 256 + serviceName.utf8.count * 6) { w in
            w.put("{\"resourceSpans\":[{\"resource\":{\"attributes\":[")
            w.put("{\"key\":\"service.name\",\"value\":{\"stringValue\":")
            var name = serviceName
            name.withUTF8 { w.jsonQuoted(UnsafeRawBufferPointer($0)) }
            w.put("}}]},\"scopeSpans\":[{\"scope\":{\"name\":\"moongate\"},\"spans\":[")
        }
        for (i, span) in spans.enumerated() {
            out.writeHead(estimate: 512 + span.path.count * 6 + span.route.count * 6 + (span.error?.utf8.count ?? 0) * 6) { w in
                if i > 0 { w.put(byte: UInt8(ascii: ",")) }
                write(span, &w)
            }
        }
        out.writeStaticString("]}]}]}")
    }

    private static func write(_ s: RecordedSpan, _ w: inout HeadWriter) {
        w.put("{\"traceId\":\"")
        w.hex(s.traceHigh, digits: 16)
        w.hex(s.traceLow, digits: 16)
        w.put("\",\"spanId\":\"")
        w.hex(s.spanID, digits: 16)
        w.put(byte: UInt8(ascii: "\""))
        if s.parentID != 0 {
            w.put(",\"parentSpanId\":\"")
            w.hex(s.parentID, digits: 16)
            w.put(byte: UInt8(ascii: "\""))
        }
        let method = MethodLabel.names[s.method]
        // Server spans are named "{method} {route}", client spans "{method}" (OTel HTTP conventions).
        w.put(",\"name\":\"")
        w.put(string: method == "OTHER" ? "HTTP" : method)
        if s.server, !s.route.isEmpty {
            w.put(byte: UInt8(ascii: " "))
            s.route.withUnsafeBytes { jsonEscapedBody($0, &w) }
        }
        w.put(byte: UInt8(ascii: "\""))
        w.put(s.server ? ",\"kind\":2" : ",\"kind\":3")
        w.put(",\"startTimeUnixNano\":\"")
        w.decimal(Int(s.startNanoseconds))
        w.put("\",\"endTimeUnixNano\":\"")
        w.decimal(Int(max(s.endNanoseconds, s.startNanoseconds)))
        w.put("\",\"attributes\":[")
        attribute("http.request.method", method == "OTHER" ? "_OTHER" : method, &w, first: true)
        if s.server {
            if !s.route.isEmpty { attribute("http.route", s.route, &w) }
            attribute("url.path", s.path, &w)
            if let id = s.requestID { id.withUnsafeReadableBytes { attribute("moongate.request_id", $0, &w) } }
        } else {
            attribute("moongate.try", s.tryNumber, &w)
            let t = s.target
            if let colon = t.lastIndex(of: UInt8(ascii: ":")), let port = Int(String(decoding: t[(colon + 1)...], as: UTF8.self)) {
                t.withUnsafeBytes { attribute("server.address", UnsafeRawBufferPointer(rebasing: $0[..<colon]), &w) }
                attribute("server.port", port, &w)
            }
        }
        if !s.upstream.isEmpty { attribute("moongate.upstream", s.upstream, &w) }
        if s.server, !s.target.isEmpty { attribute("moongate.target", s.target, &w) }
        if s.status > 0 { attribute("http.response.status_code", s.status, &w) }
        if let error = s.error {
            var e = error
            e.withUTF8 { attribute("error.type", UnsafeRawBufferPointer($0), &w) }
        }
        w.put("]")
        // ERROR for a try that failed or a 5xx; a server span's 4xx is the client's error, not ours.
        let failed = s.error != nil || s.status >= 500 || (!s.server && s.status == 0)
        w.put(failed ? ",\"status\":{\"code\":2}}" : ",\"status\":{}}")
    }

    private static func attribute(_ key: StaticString, _ value: UnsafeRawBufferPointer, _ w: inout HeadWriter, first: Bool = false) {
        if !first { w.put(byte: UInt8(ascii: ",")) }
        w.put("{\"key\":\"")
        w.put(key)
        w.put("\",\"value\":{\"stringValue\":")
        w.jsonQuoted(value)
        w.put("}}")
    }

    private static func attribute(_ key: StaticString, _ value: [UInt8], _ w: inout HeadWriter) {
        value.withUnsafeBytes { attribute(key, $0, &w) }
    }

    private static func attribute(_ key: StaticString, _ value: String, _ w: inout HeadWriter, first: Bool = false) {
        var v = value
        v.withUTF8 { attribute(key, UnsafeRawBufferPointer($0), &w, first: first) }
    }

    private static func attribute(_ key: StaticString, _ value: Int, _ w: inout HeadWriter) {
        w.put(",{\"key\":\"")
        w.put(key)
        w.put("\",\"value\":{\"intValue\":\"")
        w.decimal(value)
        w.put("\"}}")
    }

    /// The inside of a JSON string (no quotes).
    private static func jsonEscapedBody(_ p: UnsafeRawBufferPointer, _ w: inout HeadWriter) {
        for c in p {
            switch c {
            case 34: w.put("\\\"")
            case 92: w.put("\\\\")
            case 0..<0x20, 0x7F: w.put(byte: UInt8(ascii: "?"))
            default: w.put(byte: c)
            }
        }
    }
}
