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

    let gateway: Gateway
    private var head: HTTPRequestHead?

    init(gateway: Gateway) {
        self.gateway = gateway
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        switch unwrapInboundIn(data) {
        case .head(let head): self.head = head
        case .body: break
        case .end:
            guard let head else { return }
            self.head = nil
            let gateway = self.gateway
            let promise = context.eventLoop.makePromise(of: AdminResponse.self)
            promise.completeWithTask { await AdminResponse.answer(head, gateway: gateway) }
            let bound = NIOLoopBound((self, context), eventLoop: context.eventLoop)
            promise.futureResult.whenSuccess { response in
                let (handler, context) = bound.value
                handler.write(response, keepAlive: head.isKeepAlive, context: context)
            }
        }
    }

    private func write(_ response: AdminResponse, keepAlive: Bool, context: ChannelHandlerContext) {
        var headers = HTTPHeaders()
        headers.add(name: "Content-Type", value: response.contentType)
        headers.add(name: "Content-Length", value: String(response.body.utf8.count))
        headers.add(name: "Connection", value: keepAlive ? "keep-alive" : "close")
        context.write(wrapOutboundOut(.head(HTTPResponseHead(version: .http1_1, status: .init(statusCode: response.status), headers: headers))), promise: nil)
        context.write(wrapOutboundOut(.body(.byteBuffer(ByteBuffer(string: response.body)))), promise: nil)
        let done = context.writeAndFlush(wrapOutboundOut(.end(nil)))
        if !keepAlive {
            let channel = context.channel
            done.whenComplete { _ in channel.close(promise: nil) }
        }
    }
}

@available(*, unavailable)
extension AdminHandler: Sendable {}

struct AdminResponse: Sendable {
    var status: Int
    var contentType: String
    var body: String

    static func json(_ status: Int, _ body: String) -> AdminResponse {
        AdminResponse(status: status, contentType: "application/json", body: body + "\n")
    }

    static func answer(_ head: HTTPRequestHead, gateway: Gateway) async -> AdminResponse {
        guard head.method == .GET || head.method == .HEAD else { return .json(405, #"{"error":"method not allowed"}"#) }
        let path = head.uri.split(separator: "?", maxSplits: 1).first.map(String.init) ?? head.uri
        switch path {
        case "/metrics":
            return AdminResponse(status: 200, contentType: "text/plain; version=0.0.4; charset=utf-8", body: await gateway.metricsText())
        case "/healthz":
            return .json(200, #"{"status":"alive"}"#)
        case "/readyz":
            let (ready, why) = await gateway.readiness()
            return ready ? .json(200, #"{"status":"ready"}"#) : .json(503, #"{"status":"not ready","reason":"\#(why)"}"#)
        case "/status":
            return .json(200, await gateway.statusJSON())
        default:
            return .json(404, #"{"error":"not found: try /metrics, /healthz, /readyz or /status"}"#)
        }
    }
}
