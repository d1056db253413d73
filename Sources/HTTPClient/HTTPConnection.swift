import Config
import NIOCore
import NIOHTTP1
import SocketLoop
import TLS

/// One kept-alive HTTP/1.1 connection to an endpoint, for a caller on one event loop that
/// sends one request at a time (a worker's span exporter): connected on first use, reused
/// while the server keeps it open, connected again after it closes.
///
/// Loop-confined: every call on `loop`.
public final class HTTPConnection {
    public let target: HTTPFetch.Target
    public let loop: any EventLoop
    private var channel: (any Channel)?
    private var collector: KeptAliveCollector?

    public init(_ target: HTTPFetch.Target, on loop: any EventLoop) {
        self.target = target
        self.loop = loop
    }

    /// Whether a connection is open now (for tests and metrics: a kept-alive exporter reuses it).
    public var isConnected: Bool { channel?.isActive ?? false }

    /// Sends one request; the future completes on `loop` within `timeout` with the answer or an
    /// `HTTPFetch.Failure`. A request sent on a connection the server had closed meanwhile
    /// fails as `.connection`; the caller's retry gets a new one.
    public func send(
        _ method: HTTPMethod, headers: [(String, String)] = [], body: [UInt8]? = nil, timeout: TimeAmount, maxBytes: Int
    ) -> EventLoopFuture<HTTPFetch.Response> {
        loop.preconditionInEventLoop()
        let promise = loop.makePromise(of: HTTPFetch.Response.self)
        let timer = loop.assumeIsolatedUnsafeUnchecked().scheduleTask(in: timeout) { [weak self] in
            promise.fail(HTTPFetch.Failure(.timeout, "no complete answer within \(timeout.nanoseconds / 1_000_000) ms"))
            // A late answer would be taken for the next request's: this connection is done.
            self?.drop()
        }
        promise.futureResult.whenComplete { _ in timer.cancel() }
        let head = requestHead(method, headers: headers, body: body)
        if let channel, channel.isActive, let collector {
            collector.start(promise, maxBytes: maxBytes)
            write(head, body, on: channel)
            return promise.futureResult
        }
        drop()
        let target = self.target
        let collector = KeptAliveCollector()
        collector.start(promise, maxBytes: maxBytes)
        let initializer: @Sendable (any Channel) throws -> Void = { channel in
            if let tls = target.tls {
                let name = target.serverHostname
                try channel.pipeline.syncOperations.addHandler(
                    ChannelTLSClientHandler(client: tls, serverName: name, address: name == nil ? target.ipAddress : nil))
            }
            try channel.pipeline.syncOperations.addHTTPClientHandlers()
            try channel.pipeline.syncOperations.addHandler(collector)
        }
        self.collector = collector
        let connected = TCPClient.connect(host: target.endpoint.host, port: target.endpoint.port, on: loop, timeout: timeout, initializer: initializer)
        connected.hop(to: loop).assumeIsolatedUnsafeUnchecked().whenComplete { [self] result in
            switch result {
            case .failure(let error):
                if self.collector === collector { self.collector = nil }
                promise.fail(HTTPFetch.Failure(.connection, "\(error)"))
            case .success(let channel):
                guard self.collector === collector else {
                    channel.close(promise: nil)
                    return
                }
                self.channel = channel
                self.write(head, body, on: channel)
            }
        }
        return promise.futureResult
    }

    /// Closes the connection (the next request makes a new one).
    public func drop() {
        channel?.close(promise: nil)
        channel = nil
        collector = nil
    }

    private func requestHead(_ method: HTTPMethod, headers: [(String, String)], body: [UInt8]?) -> HTTPRequestHead {
        let host = target.endpoint.host, port = target.endpoint.port
        let defaultPort = target.endpoint.tls ? 443 : 80
        var head = HTTPRequestHead(version: .http1_1, method: method, uri: target.endpoint.path)
        head.headers.add(name: "Host", value: port == defaultPort ? host : "\(host):\(port)")
        for (name, value) in headers { head.headers.add(name: name, value: value) }
        head.headers.add(name: "Content-Length", value: "\(body?.count ?? 0)")
        return head
    }

    private func write(_ head: HTTPRequestHead, _ body: [UInt8]?, on channel: any Channel) {
        channel.write(HTTPClientRequestPart.head(head), promise: nil)
        if let body, !body.isEmpty { channel.write(HTTPClientRequestPart.body(.byteBuffer(ByteBuffer(bytes: body))), promise: nil) }
        channel.writeAndFlush(HTTPClientRequestPart.end(nil), promise: nil)
    }
}

@available(*, unavailable)
extension HTTPConnection: Sendable {}

/// Collects one answer at a time on a kept-alive connection; closes the connection when the
/// server says it will not keep it, or when an answer is too large.
private final class KeptAliveCollector: ChannelInboundHandler, @unchecked Sendable {
    typealias InboundIn = HTTPClientResponsePart
    private var promise: EventLoopPromise<HTTPFetch.Response>?
    private var maxBytes = 0
    private var response = HTTPFetch.Response(status: 0, body: [])
    private var keepAlive = true

    func start(_ promise: EventLoopPromise<HTTPFetch.Response>, maxBytes: Int) {
        self.promise = promise
        self.maxBytes = maxBytes
        response = HTTPFetch.Response(status: 0, body: [])
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        switch unwrapInboundIn(data) {
        case .head(let head):
            response.status = Int(head.status.code)
            response.headers = head.headers.map { ($0.name, $0.value) }
            keepAlive = head.isKeepAlive
        case .body(var buffer):
            guard response.body.count + buffer.readableBytes <= maxBytes else {
                fail(HTTPFetch.Failure(.tooLarge, "answer larger than \(maxBytes) bytes"))
                context.close(promise: nil)
                return
            }
            response.body += buffer.readBytes(length: buffer.readableBytes) ?? []
        case .end:
            let done = promise
            promise = nil
            done?.succeed(response)
            if !keepAlive { context.close(promise: nil) }
        }
    }

    func channelInactive(context: ChannelHandlerContext) {
        fail(HTTPFetch.Failure(.connection, "the connection closed before a complete answer"))
        context.fireChannelInactive()
    }

    func errorCaught(context: ChannelHandlerContext, error: any Error) {
        fail(HTTPFetch.Failure(.connection, "\(error)"))
        context.close(promise: nil)
    }

    private func fail(_ failure: HTTPFetch.Failure) {
        let done = promise
        promise = nil
        done?.fail(failure)
    }
}
