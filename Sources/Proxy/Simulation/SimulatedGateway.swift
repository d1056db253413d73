import HTTPClient
import Logging
import NIOCore
import Telemetry
import SocketLoop
import Config

/// An HTTP message as a test sees it: a request (method, target) or a response (status).
public struct SimulatedMessage: Sendable {
    public var method = ""
    public var target = ""
    public var status = 0
    public var headers: [(String, String)] = []
    public var body: [UInt8] = []
    /// For a stub's answer: the upstream did not answer, and why (`timeout`, `unavailable`).
    /// An `upstream.call` gets `nil, failure`; a proxied request's connection closes unanswered.
    public var failure: String?

    public init(method: String = "", target: String = "", status: Int = 0, headers: [(String, String)] = [], body: [UInt8] = []) {
        self.method = method
        self.target = target
        self.status = status
        self.headers = headers
        self.body = body
    }

    /// A stub's answer that the upstream failed to give.
    public static func failed(_ reason: String) -> SimulatedMessage {
        var m = SimulatedMessage()
        m.failure = reason
        return m
    }
}

/// A request the gateway sent to an upstream, and the upstream's name in the config.
public struct UpstreamCall: Sendable {
    public var upstream: String
    public var request: SimulatedMessage

    public init(upstream: String, request: SimulatedMessage) {
        self.upstream = upstream
        self.request = request
    }
}

/// Why a simulated exchange could not complete.
public struct SimulationError: Error, CustomStringConvertible {
    public var description: String

    public init(description: String) {
        self.description = description
    }
}

/// The gateway's data plane without sockets, for `moongate test`: the same workers, handlers,
/// parser, policies and Lua states as production, over in-memory pipes (`MemoryPipe`) on a
/// loop whose clock moves only when the test advances it (`ManualLoop`). A request goes in as
/// bytes on a client pipe; each upstream connection is a pipe whose bytes are parsed and
/// answered by a stub; the client's bytes come back out as the response. Timeouts, breakers
/// and ejections read the loop's clock, so `advance` drives them.
public final class SimulatedGateway {
    public let generation: ProxyGeneration
    let loop = ManualLoop()
    let connector: StubConnector
    let worker: ProxyWorker
    /// The simulated worker's metric values (`harness.metric`).
    public var metrics: MetricStore { worker.metrics }
    private var nextClientPort = 40000

    public init(generation: ProxyGeneration, logger: Logger) {
        self.generation = generation
        connector = StubConnector(loop: loop)
        worker = ProxyWorker(eventLoop: loop, generation: generation, logger: logger, connector: connector)
        // Tests print results only: the access log is kept for `harness.access_log()`.
        worker.accessLog.capture(generation.config.accessLog.destination)
    }

    /// The access-log lines (JSON) written since the last call, when the config turns the log on.
    public func takeAccessLog() -> [String] { worker.accessLog.takeCaptured() }

    /// Every target healthy again, its breaker closed: a test's fresh start.
    public func resetTargetHealth() {
        worker.resetTargetHealth()
    }

    /// Moves the data plane's clock forward, firing the timers that come due on the way.
    public func advance(by amount: TimeAmount) {
        loop.advance(by: amount)
    }

    /// Sends `request` through the gateway; `stub` answers each upstream request. Returns the
    /// client's response and the upstream requests, in order.
    public func send(
        _ request: SimulatedMessage, client: String = "127.0.0.1", listener: String? = nil,
        stub: (UpstreamCall) -> SimulatedMessage
    ) throws -> (response: SimulatedMessage, upstream: [UpstreamCall]) {
        nextClientPort = nextClientPort == 65000 ? 40000 : nextClientPort + 1
        let (clientEnd, serverEnd) = MemoryPipe.pair(
            loop: loop, clientAddress: try SocketAddress(ipAddress: client, port: nextClientPort),
            serverAddress: try SocketAddress(ipAddress: "127.0.0.1", port: 8080))
        let name = listener ?? generation.config.listeners.first?.name ?? "test"
        let handler = worker.accept(serverEnd, listener: ListenerHandle(name: name))
        defer {
            clientEnd.close()
            loop.run()
        }
        clientEnd.write(ByteBuffer(bytes: Self.serialize(request)), promise: nil)
        clientEnd.flush()

        var calls: [UpstreamCall] = []
        var clientBytes = ByteBuffer()
        for _ in 0..<10_000 {
            loop.run()
            var progressed = false
            for upstream in connector.upstreams {
                let bytes = upstream.end.takeReceived()
                if bytes.readableBytes > 0 {
                    upstream.received.writeImmutableBuffer(bytes)
                    progressed = true
                }
                if let sent = try Self.parse(&upstream.received, request: true, closed: false, isHEAD: false) {
                    let index = handler.exchange.policy.edits.upstream ?? handler.exchange.route?.upstream ?? 0
                    let call = UpstreamCall(upstream: generation.config.upstreams[index].name, request: sent)
                    calls.append(call)
                    let answer = stub(call)
                    if answer.failure != nil {
                        upstream.end.close()
                    } else if upstream.end.isOpen {
                        upstream.end.write(ByteBuffer(bytes: Self.serialize(answer)), promise: nil)
                        upstream.end.flush()
                    }
                    progressed = true
                }
            }
            for (call, promise) in connector.takeSubrequests() {
                calls.append(call)
                let answer = stub(call)
                if let failure = answer.failure {
                    let kind: HTTPFetch.Failure.Kind = failure == "timeout" ? .timeout : failure == "too_large" ? .tooLarge : .connection
                    promise.fail(HTTPFetch.Failure(kind, failure))
                } else {
                    promise.succeed(HTTPFetch.Response(status: answer.status, body: answer.body, headers: answer.headers))
                }
                progressed = true
            }
            let bytes = clientEnd.takeReceived()
            if bytes.readableBytes > 0 {
                clientBytes.writeImmutableBuffer(bytes)
                progressed = true
            }
            if let response = try Self.parse(&clientBytes, request: false, closed: clientEnd.peerClosed, isHEAD: request.method == "HEAD") {
                return (response, calls)
            }
            if !progressed { break }
        }
        throw SimulationError(description: "the gateway gave no complete response (\(clientBytes.readableBytes) bytes of one)")
    }

    // MARK: bytes

    /// The message as bytes on the wire; a body gets a Content-Length unless framing is given.
    static func serialize(_ m: SimulatedMessage) -> [UInt8] {
        var text = m.status > 0 ? "HTTP/1.1 \(m.status) \(DownstreamConnectionHandler.reason(m.status))\r\n" : "\(m.method) \(m.target) HTTP/1.1\r\n"
        var framed = false
        var host = false
        for (name, value) in m.headers {
            let lower = name.lowercased()
            if lower == "content-length" || lower == "transfer-encoding" { framed = true }
            if lower == "host" { host = true }
            text += "\(name): \(value)\r\n"
        }
        if m.status == 0, !host { text += "Host: localhost\r\n" }
        if !framed, !m.body.isEmpty || m.status > 0 { text += "Content-Length: \(m.body.count)\r\n" }
        return Array((text + "\r\n").utf8) + m.body
    }

    /// Takes one complete message from the front of `buffer`, or nil when more bytes are needed.
    /// Interim (1xx) responses are skipped.
    static func parse(_ buffer: inout ByteBuffer, request: Bool, closed: Bool, isHEAD: Bool) throws -> SimulatedMessage? {
        while true {
            var work = buffer
            guard let end = work.withUnsafeReadableBytes({ HeadParser.findEnd($0, from: 0) }) else { return nil }
            let head = work.readSlice(length: end)!
            let limits = HeadLimits(maxHeaderBytes: 1 << 20, maxHeaderCount: 10_000, maxURIBytes: 1 << 20)
            var message = SimulatedMessage()
            var framing = BodyFraming.none
            var fields: [HeaderField] = []
            do throws(HeadError) {
                try head.withUnsafeReadableBytes { (p) throws(HeadError) in
                    if request {
                        var parsed = RequestHead()
                        try HeadParser.parseRequest(p, into: &parsed, limits: limits)
                        message.method = String(decoding: slice(p, parsed.method), as: UTF8.self)
                        message.target = String(decoding: slice(p, parsed.target), as: UTF8.self)
                        framing = parsed.framing
                        fields = parsed.headers.fields
                    } else {
                        var parsed = ResponseHead()
                        try HeadParser.parseResponse(p, into: &parsed, limits: limits)
                        message.status = parsed.status
                        fields = parsed.headers.fields
                        if isHEAD || parsed.status == 204 || parsed.status == 304 || parsed.status < 200 {
                            framing = .none
                        } else if parsed.headers.chunked {
                            framing = .chunked
                        } else if let length = parsed.headers.contentLength {
                            framing = .contentLength(length)
                        } else {
                            framing = .untilClose
                        }
                    }
                    message.headers = fields.map {
                        (String(decoding: slice(p, $0.name), as: UTF8.self), String(decoding: slice(p, $0.value), as: UTF8.self))
                    }
                }
            } catch {
                throw SimulationError(description: "unparseable \(request ? "upstream request" : "response"): \(error.message)")
            }
            switch framing {
            case .none:
                break
            case .contentLength(let length):
                guard let body = work.readBytes(length: length) else { return nil }
                message.body = body
            case .chunked:
                var decoder = ChunkedDecoder()
                guard case .done(let body) = decoder.collect(&work, max: .max) else { return nil }
                message.body = Array(body.readableBytesView)
            case .untilClose:
                guard closed else { return nil }
                message.body = work.readBytes(length: work.readableBytes) ?? []
            }
            buffer = work
            if !request, message.status < 200 { continue }
            return message
        }
    }
}

/// Upstream connections as in-memory pipes, kept so the simulation can answer them.
final class StubConnector: UpstreamConnector {
    final class Upstream {
        /// The origin's end of the pipe (the handler has the other).
        let end: MemoryPipe.End
        var received = ByteBuffer()

        init(end: MemoryPipe.End) { self.end = end }
    }

    let loop: ManualLoop
    private(set) var upstreams: [Upstream] = []
    private var subrequests: [(UpstreamCall, EventLoopPromise<HTTPFetch.Response>)] = []

    init(loop: ManualLoop) { self.loop = loop }

    func subrequest(_ call: UpstreamCall) -> EventLoopFuture<HTTPFetch.Response> {
        let promise = loop.makePromise(of: HTTPFetch.Response.self)
        subrequests.append((call, promise))
        return promise.futureResult
    }

    /// The sub-requests waiting for an answer, oldest first.
    func takeSubrequests() -> [(UpstreamCall, EventLoopPromise<HTTPFetch.Response>)] {
        defer { subrequests = [] }
        return subrequests
    }

    func connect(_ pool: TargetPool, handler: UpstreamConnectionHandler) -> EventLoopFuture<Void> {
        upstreams.removeAll { !$0.end.isOpen }
        let (gatewayEnd, originEnd) = MemoryPipe.pair(loop: loop, clientAddress: nil, serverAddress: pool.address)
        handler.attach(memory: gatewayEnd)
        upstreams.append(Upstream(end: originEnd))
        return loop.makeSucceededVoidFuture()
    }
}

@available(*, unavailable)
extension SimulatedGateway: Sendable {}

@available(*, unavailable)
extension StubConnector: Sendable {}
