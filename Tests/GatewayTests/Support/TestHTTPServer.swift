import Foundation
import NIOCore
import NIOHTTP1
import NIOPosix
import NIOSSL

/// A small real HTTP server for tests of what the gateway calls (JWKS providers,
/// introspection endpoints): `respond` gets each request and returns its answer, after an
/// optional delay. One connection per request, as the gateway's client uses, unless made
/// with `keepAlive` (then connections stay open and are counted).
final class TestHTTPServer: @unchecked Sendable {
    struct Request: Sendable {
        var method: String
        var uri: String
        var headers: [(String, String)]
        var body: [UInt8]

        func header(_ name: String) -> String? { headers.first { $0.0.lowercased() == name.lowercased() }?.1 }
    }

    struct Answer: Sendable {
        var status = 200
        var body = ""
        var delay: TimeAmount = .zero
        var headers: [(String, String)] = []
    }

    private let lock = NSLock()
    private var respond: @Sendable (Request) -> Answer
    private var received: [Request] = []
    private(set) var port = 0
    private let group = MultiThreadedEventLoopGroup(numberOfThreads: 1)
    private var channel: Channel?
    private var stopped = false
    private var accepted = 0
    private let keepAlive: Bool

    /// Connections accepted so far.
    var connections: Int { lock.withLock { accepted } }

    /// `tls`: serve https with this certificate chain and key (PEM).
    init(tls: (certificate: String, key: String)? = nil, keepAlive: Bool = false, _ respond: @escaping @Sendable (Request) -> Answer) async throws {
        self.respond = respond
        self.keepAlive = keepAlive
        let server = self
        let context = try tls.map { tls in
            try NIOSSLContext(
                configuration: .makeServerConfiguration(
                    certificateChain: try NIOSSLCertificate.fromPEMBytes(Array(tls.certificate.utf8)).map { .certificate($0) },
                    privateKey: .privateKey(try NIOSSLPrivateKey(bytes: Array(tls.key.utf8), format: .pem))))
        }
        channel = try await ServerBootstrap(group: group)
            .serverChannelOption(.socketOption(.so_reuseaddr), value: 1)
            .childChannelInitializer { channel in
                server.lock.withLock { server.accepted += 1 }
                return channel.eventLoop.makeCompletedFuture {
                    if let context { try channel.pipeline.syncOperations.addHandler(NIOSSLServerHandler(context: context)) }
                    try channel.pipeline.syncOperations.configureHTTPServerPipeline()
                    try channel.pipeline.syncOperations.addHandler(Responder(server: server))
                }
            }
            .bind(host: "127.0.0.1", port: 0).get()
        port = channel!.localAddress!.port!
    }

    /// Replaces how requests are answered.
    func answer(with respond: @escaping @Sendable (Request) -> Answer) { lock.withLock { self.respond = respond } }

    /// The requests received so far.
    var requests: [Request] { lock.withLock { received } }

    fileprivate func handle(_ request: Request) -> Answer {
        lock.withLock {
            received.append(request)
            return respond
        }(request)
    }

    /// Takes the server down (once; later calls do nothing).
    func stop() async {
        let first = lock.withLock { () -> Bool in
            defer { stopped = true }
            return !stopped
        }
        guard first else { return }
        try? await channel?.close()
        try? await group.shutdownGracefully()
    }

    private final class Responder: ChannelInboundHandler {
        typealias InboundIn = HTTPServerRequestPart
        typealias OutboundOut = HTTPServerResponsePart
        let server: TestHTTPServer
        var head: HTTPRequestHead?
        var body: [UInt8] = []

        init(server: TestHTTPServer) { self.server = server }

        func channelRead(context: ChannelHandlerContext, data: NIOAny) {
            switch unwrapInboundIn(data) {
            case .head(let h):
                head = h
                body = []
            case .body(var b):
                body += b.readBytes(length: b.readableBytes) ?? []
            case .end:
                guard let head else { return }
                let request = Request(
                    method: head.method.rawValue, uri: head.uri, headers: head.headers.map { ($0.name, $0.value) }, body: body)
                let answer = server.handle(request)
                let bound = NIOLoopBound(context, eventLoop: context.eventLoop)
                let keepAlive = server.keepAlive
                context.eventLoop.scheduleTask(in: answer.delay) {
                    let context = bound.value
                    let out = ByteBuffer(string: answer.body)
                    var response = HTTPResponseHead(version: .http1_1, status: .init(statusCode: answer.status))
                    response.headers.add(name: "Content-Type", value: "application/json")
                    response.headers.add(name: "Content-Length", value: "\(out.readableBytes)")
                    for (name, value) in answer.headers { response.headers.add(name: name, value: value) }
                    if !keepAlive { response.headers.add(name: "Connection", value: "close") }
                    context.write(NIOAny(HTTPServerResponsePart.head(response)), promise: nil)
                    context.write(NIOAny(HTTPServerResponsePart.body(.byteBuffer(out))), promise: nil)
                    let channel = context.channel
                    context.writeAndFlush(NIOAny(HTTPServerResponsePart.end(nil))).whenComplete { _ in if !keepAlive { channel.close(promise: nil) } }
                }
            }
        }
    }
}
