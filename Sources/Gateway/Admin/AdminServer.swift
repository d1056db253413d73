import Config
import Logging
import NIOCore
import NIOHTTP1
import NIOPosix

/// The admin listener, on its own address off the data port: `/metrics` (Prometheus text),
/// `/healthz` (the process answers), `/readyz` (a config is loaded and the gateway is not
/// draining), `/status` (JSON). NIOHTTP1's typed pipeline is fine here: a scrape every few
/// seconds, never on the request path.
final class AdminServer: Sendable {
    let channel: Channel
    let port: Int

    private init(channel: Channel) {
        self.channel = channel
        self.port = channel.localAddress?.port ?? 0
    }

    static func start(_ address: SocketAddressSpec, gateway: Gateway, group: EventLoopGroup, logger: Logger) async throws -> AdminServer {
        let channel = try await ServerBootstrap(group: group)
            .serverChannelOption(.backlog, value: 64)
            .serverChannelOption(.socketOption(.so_reuseaddr), value: 1)
            .childChannelInitializer { channel in
                channel.eventLoop.makeCompletedFuture {
                    try channel.pipeline.syncOperations.configureHTTPServerPipeline(withErrorHandling: true)
                    try channel.pipeline.syncOperations.addHandler(AdminHandler(gateway: gateway))
                }
            }
            .bind(host: address.host, port: address.port).get()
        let server = AdminServer(channel: channel)
        logger.info("admin listener", metadata: ["address": "\(address.host):\(server.port)"])
        return server
    }

    func close() async {
        try? await channel.close()
    }
}

/// Answers one admin request at a time per connection; what it needs from the gateway (an
/// actor) it gets in a task, then writes back on the channel's loop.
final class AdminHandler: ChannelInboundHandler, RemovableChannelHandler {
    typealias InboundIn = HTTPServerRequestPart
    typealias OutboundOut = HTTPServerResponsePart

    /// Largest request body (a whole configuration with its scripts).
    static let maxBodyBytes = 16 << 20

    let gateway: Gateway
    private var head: HTTPRequestHead?
    private var body: [UInt8] = []
    private var tooLarge = false

    init(gateway: Gateway) {
        self.gateway = gateway
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        switch unwrapInboundIn(data) {
        case .head(let head):
            self.head = head
            body = []
            tooLarge = head.headers.first(name: "content-length").flatMap { Int($0) }.map { $0 > Self.maxBodyBytes } ?? false
        case .body(var chunk):
            guard !tooLarge else { return }
            if body.count + chunk.readableBytes > Self.maxBodyBytes {
                tooLarge = true
                body = []
            } else {
                body.append(contentsOf: chunk.readBytes(length: chunk.readableBytes) ?? [])
            }
        case .end:
            guard let head else { return }
            self.head = nil
            let body = self.body
            self.body = []
            if tooLarge {
                write(.error(413, "the body is larger than \(Self.maxBodyBytes >> 20) MiB"), keepAlive: false, context: context)
                return
            }
            guard let request = AdminRequest(head: head, body: body) else {
                write(.error(400, "the request target is not valid (bad % escape, NUL or not UTF-8)"), keepAlive: head.isKeepAlive, context: context)
                return
            }
            let gateway = self.gateway
            let promise = context.eventLoop.makePromise(of: AdminResponse.self)
            promise.completeWithTask { await AdminAPI.answer(request, gateway: gateway) }
            let bound = NIOLoopBound((self, context), eventLoop: context.eventLoop)
            promise.futureResult.whenSuccess { response in
                let (handler, context) = bound.value
                handler.write(response, keepAlive: head.isKeepAlive, head: head.method == .HEAD, context: context)
            }
        }
    }

    private func write(_ response: AdminResponse, keepAlive: Bool, head: Bool = false, context: ChannelHandlerContext) {
        var headers = HTTPHeaders()
        headers.add(name: "Content-Type", value: response.contentType)
        headers.add(name: "Content-Length", value: String(response.body.utf8.count))
        headers.add(name: "Connection", value: keepAlive ? "keep-alive" : "close")
        headers.add(name: "Cache-Control", value: "no-store")
        for (name, value) in response.headers { headers.add(name: name, value: value) }
        context.write(wrapOutboundOut(.head(HTTPResponseHead(version: .http1_1, status: .init(statusCode: response.status), headers: headers))), promise: nil)
        if !head { context.write(wrapOutboundOut(.body(.byteBuffer(ByteBuffer(string: response.body)))), promise: nil) }
        let done = context.writeAndFlush(wrapOutboundOut(.end(nil)))
        if !keepAlive {
            let channel = context.channel
            done.whenComplete { _ in channel.close(promise: nil) }
        }
    }
}

@available(*, unavailable)
extension AdminHandler: Sendable {}
