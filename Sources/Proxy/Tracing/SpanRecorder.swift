import CompressNIO
import Config
import HTTPClient
import NIOCore
import NIOHTTP1
import Telemetry

/// How a generation exports spans: made off the event loops (an https target reads its
/// trusted certificates), shared by every worker.
final class TraceExport: Sendable {
    let target: HTTPFetch.Target
    let serviceName: String
    let timeout: TimeAmount
    let encoding: TracingConfig.Encoding
    let gzip: Bool
    /// A new trace is recorded when its low 64 bits fall under this (the sample ratio of 2^64).
    let sampleBelow: UInt64

    init(_ config: TracingConfig, endpoint: HTTPEndpoint) throws {
        target = try HTTPFetch.Target(endpoint)
        serviceName = config.serviceName
        timeout = TimeAmount(config.timeout)
        encoding = config.encoding
        gzip = config.gzip
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
/// `batchSize` spans, with one export in flight at a time, on a kept-alive connection.
/// Bounded: spans past `maxSpans` while the collector is slow or down are dropped and counted.
/// An export the collector asks to retry (`429`, `502`, `503`, `504`, or no answer) is sent
/// again after a back-off (its `Retry-After`, else 1, 2, 4 s), at most `maxAttempts` times,
/// as the OTLP specification says.
///
/// Hand-written rather than swift-otel (1.6): its exporters are internal, reachable only
/// through its `Tracer`, which makes a lock-guarded span object per request, picks span ids
/// itself (the `traceparent` sent upstream must name the span that is exported, and the
/// gateway writes it while it writes the head) and hands every finished span to an async
/// processor. Here a span is a struct appended on the worker's own loop; a batch is encoded
/// (protobuf or JSON, gzipped) and sent once a second, off the request path.
final class SpanRecorder {
    private(set) var spans: [RecordedSpan] = []
    private(set) var dropped = 0
    private(set) var exported = 0
    private(set) var failedExports = 0
    private(set) var retries = 0
    private var exporting = false
    private var lastFailureLog: NIODeadline = .uptimeNanoseconds(0)
    /// The collector connection, for the generation's export settings it was made for.
    private var connection: (export: TraceExport, client: HTTPConnection)?

    static let maxSpans = 8192
    static let batchSize = 1024
    static let maxAttempts = 4
    /// How long a `Retry-After` may hold an export back.
    static let maxRetryAfter: TimeAmount = .seconds(30)

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
            connection?.client.drop()
            connection = nil
            return
        }
        guard !exporting, !spans.isEmpty else { return }
        let batch = spans
        spans.removeAll(keepingCapacity: true)
        var body = ByteBuffer()
        body.reserveCapacity(batch.count * 600 + 256)
        var headers: [(String, String)]
        switch to.encoding {
        case .protobuf:
            OTLPProtobuf.write(batch, serviceName: to.serviceName, into: &body)
            headers = [("Content-Type", "application/x-protobuf")]
        case .json:
            OTLPJSON.write(batch, serviceName: to.serviceName, into: &body)
            headers = [("Content-Type", "application/json")]
        }
        if to.gzip, let compressed = try? body.compress(with: .gzip()) {
            body = compressed
            headers.append(("Content-Encoding", "gzip"))
        }
        if connection?.export !== to {
            connection?.client.drop()
            connection = (to, HTTPConnection(to.target, on: loop))
        }
        exporting = true
        send(Array(body.readableBytesView), headers: headers, count: batch.count, attempt: 1, on: loop, logger: logger)
    }

    private func send(_ body: [UInt8], headers: [(String, String)], count: Int, attempt: Int, on loop: EventLoop, logger: @escaping (String) -> Void) {
        guard let (to, client) = connection else {
            exporting = false
            return
        }
        client.send(.POST, headers: headers, body: body, timeout: to.timeout, maxBytes: 64 * 1024)
            .assumeIsolatedUnsafeUnchecked().whenComplete { [self] result in
                let why: String
                var retryAfter: TimeAmount?
                switch result {
                case .success(let response) where (200..<300).contains(response.status):
                    exporting = false
                    exported += count
                    return
                case .success(let response):
                    why = "the collector answered \(response.status)"
                    guard [429, 502, 503, 504].contains(response.status) else { return finish(failed: count, why, logger) }
                    let header = response.headers.first { $0.0.lowercased() == "retry-after" }?.1
                    if let seconds = header.flatMap({ Int64($0.trimmingSpaces()) }), seconds >= 0 {
                        retryAfter = min(.seconds(seconds), Self.maxRetryAfter)
                    }
                case .failure(let error):
                    why = "\(error)"
                    client.drop()
                }
                guard attempt < Self.maxAttempts, connection?.client === client else { return finish(failed: count, why, logger) }
                retries += 1
                let delay = retryAfter ?? .seconds(Int64(1) << (attempt - 1))
                loop.assumeIsolatedUnsafeUnchecked().scheduleTask(in: delay) { [self] in
                    send(body, headers: headers, count: count, attempt: attempt + 1, on: loop, logger: logger)
                }
            }
    }

    private func finish(failed count: Int, _ why: String, _ logger: (String) -> Void) {
        exporting = false
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
