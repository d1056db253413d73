import Config
import HTTPClient
import NIOCore
import Telemetry
import NIOHTTP1

/// How a generation exports spans: made off the event loops (an https target reads its
/// trusted certificates), shared by every worker.
final class TraceExport: Sendable {
    let target: HTTPFetch.Target
    let serviceName: String
    let timeout: TimeAmount
    /// A new trace is recorded when its low 64 bits fall under this (the sample ratio of 2^64).
    let sampleBelow: UInt64

    init(_ config: TracingConfig, endpoint: HTTPEndpoint) throws {
        target = try HTTPFetch.Target(endpoint)
        serviceName = config.serviceName
        timeout = TimeAmount(config.timeout)
        // Capped under 2^64, so the conversion cannot trap.
        sampleBelow = config.sampleRatio >= 1 ? .max : UInt64(min(max(config.sampleRatio, 0) * 0x1p64, 0x1p64 - 4096))
    }
}

/// A finished span, as plain values: recorded on the worker's loop without locks or
/// allocations beyond the path's bytes, and encoded only when a batch is exported.
struct RecordedSpan {
    var traceHigh: UInt64
    var traceLow: UInt64
    var spanID: UInt64
    /// 0: none (a request that started its trace here).
    var parentID: UInt64
    /// The request's own span; otherwise one upstream try (a client span).
    var server: Bool
    var startNanoseconds: Int64
    var endNanoseconds: Int64
    /// The HTTP status the span ended with; 0 when a try got none.
    var status: Int
    /// `MethodLabel` index.
    var method: Int
    var route: [UInt8]
    var path: [UInt8]
    var upstream: [UInt8]
    /// `host:port` of the try's target.
    var target: [UInt8]
    var tryNumber: Int
    /// Why a try failed, or why the request got a gateway error.
    var error: String?
    var requestID: ByteBuffer?
}

/// One worker's finished spans, sent to the collector in batches: every second, or at
/// `batchSize` spans, with one export in flight at a time. Bounded: spans past `maxSpans`
/// while the collector is slow or down are dropped and counted.
///
/// Hand-written rather than swift-otel (1.6): its exporters are internal, reachable only
/// through its `Tracer`, which makes a lock-guarded span object per request, picks span ids
/// itself (the `traceparent` sent upstream must name the span that is exported, and the
/// gateway writes it while it writes the head) and hands every finished span to an async
/// processor. Here a span is a struct appended on the worker's own loop; a batch is encoded
/// and sent once a second, off the request path, in OTLP/HTTP's JSON encoding (which also
/// keeps swift-protobuf and an HTTP client stack out of the build).
final class SpanRecorder {
    private(set) var spans: [RecordedSpan] = []
    private(set) var dropped = 0
    private(set) var exported = 0
    private(set) var failedExports = 0
    private var exporting = false
    private var lastFailureLog: NIODeadline = .uptimeNanoseconds(0)

    static let maxSpans = 8192
    static let batchSize = 1024

    @inline(__always)
    func record(_ span: RecordedSpan) {
        guard spans.count < Self.maxSpans else {
            dropped += 1
            return
        }
        spans.append(span)
    }

    var wantsExport: Bool { spans.count >= Self.batchSize }

    /// Sends what is buffered (up to `maxSpans`), unless an export is still in flight.
    func export(_ to: TraceExport?, on loop: EventLoop, logger: @escaping (String) -> Void) {
        guard let to else {
            spans.removeAll(keepingCapacity: true)
            return
        }
        guard !exporting, !spans.isEmpty else { return }
        let batch = spans
        spans.removeAll(keepingCapacity: true)
        var body = ByteBuffer()
        body.reserveCapacity(batch.count * 600 + 256)
        OTLPJSON.write(batch, serviceName: to.serviceName, into: &body)
        exporting = true
        let count = batch.count
        HTTPFetch.send(
            .POST, to.target, headers: [("Content-Type", "application/json")], body: Array(body.readableBytesView),
            on: loop, timeout: to.timeout, maxBytes: 64 * 1024
        ).assumeIsolatedUnsafeUnchecked().whenComplete { [self] result in
            exporting = false
            switch result {
            case .success(let response) where (200..<300).contains(response.status):
                exported += count
            case .success(let response):
                failed(count, "the collector answered \(response.status)", logger)
            case .failure(let error):
                failed(count, "\(error)", logger)
            }
        }
    }

    private func failed(_ count: Int, _ why: String, _ logger: (String) -> Void) {
        failedExports += 1
        dropped += count
        // Once a minute at most: a collector that is down must not flood the log.
        let now = NIODeadline.now()
        if now - lastFailureLog > .seconds(60) {
            lastFailureLog = now
            logger("span export failed (\(count) spans dropped): \(why)")
        }
    }
}

@available(*, unavailable)
extension SpanRecorder: Sendable {}

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
