// Hot path: taken from the worker's spares when a request starts, given back when it ends.
import NIOCore
import Scripting

/// Everything one request owns, from its parsed head to its log line (Pingora's `CTX`): the
/// route and generation it was matched in, the try in progress, the policy's state, the
/// response as it comes down, and the figures for its metrics, log line and spans.
///
/// A connection holds one only while a request is in progress: it takes one from its worker
/// when a head arrives and gives it back whole when the request ends (`endExchange`), so an
/// idle kept-alive connection holds none, and a warm worker allocates none per request.
/// Between requests the connection points at its worker's `vacant` exchange, which no
/// request ever uses: a late event that reads it finds an exchange with nothing in progress.
final class Exchange {
    /// The worker's placeholder for connections between requests.
    let isVacant: Bool
    /// The next exchange in the worker's spares, while this one is among them.
    var nextSpare: Exchange?

    // What was asked.
    /// The generation the request was matched in; it serves the request to its end.
    var generation: WorkerGeneration?
    var request = RequestHead()
    var route: CompiledRoute?
    var requestID = ByteBuffer()
    /// Not yet counted in the metrics and the access log (`recordRequest` counts it once).
    var open = false
    /// The request's method as a `MethodLabel` index.
    var metricMethod = 9
    var trace = TraceContext()
    /// This request's spans are recorded (tracing is on and the trace is sampled).
    var traced = false

    // The request body on its way up.
    var requestBody = DownstreamConnectionHandler.Body.none
    var requestBodyBytes = 0

    // The response on its way down.
    var response = ResponseHead()
    /// A response head that has not fully arrived.
    var responseHeadBuffer: ByteBuffer?
    var responseBody = DownstreamConnectionHandler.Body.none
    /// The client gets the body re-framed as chunks.
    var responseChunkedOut = false
    var upstreamReusable = true
    /// The try asked the upstream to switch protocols (the route passes the client's `Upgrade`).
    var upgrading = false
    /// The status the client got (for the log phase, metrics and the log line).
    var sentStatus = 0

    var attempt = Attempt()
    /// The route's policy for this request (one per exchange, reused with it).
    let policy: PolicySession
    var record = ExchangeRecord()

    /// Head buffers reused from request to request: once the socket write has released one,
    /// `clear()` recycles its storage. They stay with the exchange while it waits among the
    /// worker's spares, unless a large head grew them (`reset`).
    var upstreamHeadOut = ByteBuffer()
    var clientHeadOut = ByteBuffer()
    var forwardedHeadStorage = ByteBuffer()
    var requestHeadStorage = ByteBuffer()

    init(worker: ProxyWorker, vacant: Bool = false) {
        isVacant = vacant
        policy = PolicySession(worker: worker)
        policy.exchange = self
    }

    /// Forgets the request, keeping only storage (cleared) for the next one.
    func reset() {
        generation = nil
        // The parser resets the heads' field tables as it fills them (resetting them here too
        // cost a twentieth of a proxied request's instructions); an answer to a head that never
        // parsed reads only these.
        request.isHEAD = false
        request.minorVersion = 1
        request.expectContinue = false
        route = nil
        requestID.clear()
        open = false
        metricMethod = 9
        trace = TraceContext()
        traced = false
        requestBody = .none
        requestBodyBytes = 0
        response.status = 0
        responseHeadBuffer = nil
        responseBody = .none
        responseChunkedOut = false
        upstreamReusable = true
        upgrading = false
        sentStatus = 0
        attempt.reset()
        if policy.used { policy.reset() }
        record.reset()
        // A spare keeps ordinary heads' storage, not a 64 KB one a single request needed.
        if upstreamHeadOut.capacity > Self.keptCapacity { upstreamHeadOut = ByteBuffer() }
        if clientHeadOut.capacity > Self.keptCapacity { clientHeadOut = ByteBuffer() }
        if forwardedHeadStorage.capacity > Self.keptCapacity { forwardedHeadStorage = ByteBuffer() }
        if requestHeadStorage.capacity > Self.keptCapacity { requestHeadStorage = ByteBuffer() }
    }

    static let keptCapacity = 8192

    /// `{"error": message, "request_id": ...}`, giving the request its id if it has none yet.
    func errorBody(_ message: String, ids: inout RequestIDGenerator) -> ByteBuffer {
        if requestID.readableBytes == 0 { ids.next(into: &requestID) }
        var body = ByteBuffer()
        body.writeHead(estimate: 64 + message.utf8.count + requestID.readableBytes) { w in
            w.put("{\"error\":\"")
            w.put(string: message)  // messages are ours: no quotes or backslashes to escape
            w.put("\",\"request_id\":\"")
            w.put(requestID)
            w.put("\"}\n")
        }
        return body
    }

    /// Storage for one of the head buffers above, on an exchange's first use of it.
    static func newHeadBuffer() -> ByteBuffer { ByteBufferAllocator().buffer(capacity: 1024) }
}

/// The request's tries: the balancer that picks them, the one in progress, and what a retry
/// needs (the client's head, which targets were tried).
struct Attempt {
    var balancer: UpstreamBalancer?
    /// The current try's target.
    var pool: TargetPool?
    /// The current try's connection, once it has one.
    var upstream: UpstreamConnectionHandler?
    /// The rewritten head, kept until a response starts so a stale pooled connection can be retried.
    var upstreamHead: ByteBuffer?
    /// The client's request head, kept until a response starts so a retry can rewrite it for
    /// another target.
    var forwardedHead: ByteBuffer?
    /// A bit per target index already tried.
    var tried: UInt64 = 0
    var count = 0
    var hashKey: UInt64?
    /// The whole request went with the head (no body left to stream), so it can be sent again.
    var retryableBody = false
    /// A try has started streaming the request body upstream: from then on it cannot be sent
    /// again. Before (a connect that failed), the body waits untouched for the next try.
    var bodyStarted = false
    /// `pool.health.inFlight` counts this try.
    var pending = false
    /// When the current try was sent.
    var start = NIODeadline.uptimeNanoseconds(0)

    /// Back to a fresh try, dropping only what is set: assigning a whole new `Attempt`
    /// destroyed the old one through an outlined function (callgrind: about 170 instructions).
    mutating func reset() {
        if balancer != nil { balancer = nil }
        if pool != nil { pool = nil }
        if upstream != nil { upstream = nil }
        if upstreamHead != nil { upstreamHead = nil }
        if forwardedHead != nil { forwardedHead = nil }
        tried = 0
        count = 0
        hashKey = nil
        retryableBody = false
        bodyStarted = false
        pending = false
    }
}

/// The figures of the request's access-log line.
struct ExchangeRecord {
    var bytesSent = 0
    var upstreamNanoseconds: Int64 = 0
    var luaNanoseconds: UInt64 = 0
    var logFields: [(String, String)] = []
    /// `METHOD target` of the request, kept for its log line and span.
    var logRequestLine = ByteBuffer()

    mutating func reset() {
        bytesSent = 0
        upstreamNanoseconds = 0
        luaNanoseconds = 0
        if !logFields.isEmpty { logFields.removeAll(keepingCapacity: true) }
        logRequestLine.clear()
    }
}
