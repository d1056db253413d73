import Config
import NIOCore
import NIOHTTP1
import SocketLoop
import TLS

/// A small HTTP/1.1 client on NIO: one connection per request (`Connection: close`),
/// bounded in size and time. The control plane fetches JWKS documents with it; the data plane
/// asks introspection endpoints on a cache miss, from the request's own event loop.
public enum HTTPFetch {
    public struct Response: Sendable {
        public var status: Int
        public var body: [UInt8]
        public var cacheControl: String?
        public var headers: [(String, String)]

        public init(status: Int, body: [UInt8], cacheControl: String? = nil, headers: [(String, String)] = []) {
            self.status = status
            self.body = body
            self.cacheControl = cacheControl
            self.headers = headers
        }
    }

    public struct Failure: Error, CustomStringConvertible {
        public enum Kind: Sendable {
            /// No complete answer within the timeout.
            case timeout
            /// Could not connect, or the connection closed early.
            case connection
            /// The answer was larger than allowed.
            case tooLarge
            /// An answer, but not the one expected (its status).
            case status
        }

        public var kind: Kind
        public var description: String

        public init(_ kind: Kind, _ description: String) {
            self.kind = kind
            self.description = description
        }
    }

    /// How to reach an endpoint: its address, and for https a TLS context made once (it
    /// reads the trusted certificates: off the event loops).
    public struct Target: Sendable {
        public let endpoint: HTTPEndpoint
        let tls: TLSClientContext?

        public init(_ endpoint: HTTPEndpoint) throws {
            self.endpoint = endpoint
            guard endpoint.tls else {
                tls = nil
                return
            }
            let upstream = endpoint.upstreamTLS
            let certificate = upstream.flatMap { u in u.cert.flatMap { cert in u.key.map { TLSCertificates.Source(cert: cert, key: $0) } } }
            tls = try TLSClientContext(
                caFile: endpoint.caFile ?? upstream?.caFile, certificate: certificate, verify: upstream?.verify ?? true,
                minVersion: upstream?.minVersion == 13 ? .tls13 : .tls12)
        }

        /// The host as an IP address to verify the certificate against, when it is one.
        var ipAddress: String? {
            let host = endpoint.host
            return host.first == "[" ? String(host.dropFirst().dropLast()) : host
        }

        /// SNI and the name the certificate must carry (an upstream's `sni` first); an IP
        /// literal is checked as an address.
        var serverHostname: String? {
            if let sni = endpoint.upstreamTLS?.sni { return sni }
            let host = endpoint.host
            if host.first == "[" || host.allSatisfy({ $0.isNumber || $0 == "." }) { return nil }
            return host
        }
    }

    public static func get(_ target: Target, group: EventLoopGroup, timeout: TimeAmount = .seconds(5), maxBytes: Int = 1 << 20) async throws
        -> Response
    {
        try await send(.GET, target, on: group.next(), timeout: timeout, maxBytes: maxBytes).get()
    }

    /// Sends one request on `loop`; the future completes on `loop` within `timeout`, with the
    /// answer or a `Failure`. `address`, when the caller has it resolved already, is dialled
    /// instead of the endpoint's host (which still names the request's `Host`): no name
    /// lookup, no hop off the loop.
    public static func send(
        _ method: HTTPMethod, _ target: Target, headers: [(String, String)] = [], body: [UInt8]? = nil,
        on loop: EventLoop, timeout: TimeAmount, maxBytes: Int, address: SocketAddress? = nil
    ) -> EventLoopFuture<Response> {
        let host = target.endpoint.host, port = target.endpoint.port, path = target.endpoint.path
        let defaultPort = target.endpoint.tls ? 443 : 80
        let promise = loop.makePromise(of: Response.self)
        let timer = loop.scheduleTask(in: timeout) {
            promise.fail(Failure(.timeout, "no complete answer within \(timeout.nanoseconds / 1_000_000) ms"))
        }
        promise.futureResult.whenComplete { _ in timer.cancel() }
        let initializer: @Sendable (Channel) throws -> Void = { channel in
            if let tls = target.tls {
                let name = target.serverHostname
                try channel.pipeline.syncOperations.addHandler(
                    ChannelTLSClientHandler(client: tls, serverName: name, address: name == nil ? target.ipAddress : nil))
            }
            try channel.pipeline.syncOperations.addHTTPClientHandlers()
            try channel.pipeline.syncOperations.addHandler(Collector(promise: promise, maxBytes: maxBytes))
        }
        let connected =
            if let address {
                TCPClient.connect(to: address, on: loop, timeout: timeout, initializer: initializer)
            } else {
                TCPClient.connect(host: host, port: port, on: loop, timeout: timeout, initializer: initializer)
            }
        connected
            .whenComplete { result in
                switch result {
                case .failure(let error):
                    promise.fail(Failure(.connection, "\(error)"))
                case .success(let channel):
                    promise.futureResult.whenComplete { _ in channel.close(promise: nil) }
                    var head = HTTPRequestHead(version: .http1_1, method: method, uri: path)
                    head.headers.add(name: "Host", value: port == defaultPort ? host : "\(host):\(port)")
                    head.headers.add(name: "Accept", value: "application/json")
                    head.headers.add(name: "Connection", value: "close")
                    for (name, value) in headers { head.headers.add(name: name, value: value) }
                    if let body { head.headers.add(name: "Content-Length", value: "\(body.count)") }
                    channel.write(HTTPClientRequestPart.head(head), promise: nil)
                    if let body, !body.isEmpty { channel.write(HTTPClientRequestPart.body(.byteBuffer(ByteBuffer(bytes: body))), promise: nil) }
                    channel.writeAndFlush(HTTPClientRequestPart.end(nil), promise: nil)
                }
            }
        return promise.futureResult
    }

    private final class Collector: ChannelInboundHandler {
        typealias InboundIn = HTTPClientResponsePart
        let promise: EventLoopPromise<Response>
        let maxBytes: Int
        var response = Response(status: 0, body: [])
        var done = false

        func finish(_ result: Result<Response, Error>) {
            guard !done else { return }
            done = true
            // The timer may have failed the promise already: completing twice is a no-op here.
            switch result {
            case .success(let r): promise.succeed(r)
            case .failure(let e): promise.fail(e)
            }
        }

        init(promise: EventLoopPromise<Response>, maxBytes: Int) {
            self.promise = promise
            self.maxBytes = maxBytes
        }

        func channelRead(context: ChannelHandlerContext, data: NIOAny) {
            switch unwrapInboundIn(data) {
            case .head(let head):
                response.status = Int(head.status.code)
                response.cacheControl = head.headers.first(name: "Cache-Control")
                response.headers = head.headers.map { ($0.name, $0.value) }
            case .body(var buffer):
                if response.body.count + buffer.readableBytes > maxBytes {
                    finish(.failure(Failure(.tooLarge, "answer larger than \(maxBytes) bytes")))
                    context.close(promise: nil)
                    return
                }
                response.body += buffer.readBytes(length: buffer.readableBytes) ?? []
            case .end:
                finish(.success(response))
                context.close(promise: nil)
            }
        }

        func channelInactive(context: ChannelHandlerContext) {
            finish(.failure(Failure(.connection, "the connection closed before a complete answer")))
        }

        func errorCaught(context: ChannelHandlerContext, error: Error) {
            finish(.failure(Failure(.connection, "\(error)")))
            context.close(promise: nil)
        }
    }

    /// `max-age` of a Cache-Control value, in seconds.
    public static func maxAge(_ cacheControl: String?) -> Int? {
        guard let cacheControl else { return nil }
        for directive in cacheControl.split(separator: ",") {
            let d = directive.trimmingSpaces().lowercased()
            if d.hasPrefix("max-age="), let v = Int(d.dropFirst(8)), v >= 0 { return v }
        }
        return nil
    }
}

#if canImport(Foundation)
import FoundationEssentials
#endif
