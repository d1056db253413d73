import NIOCore
import NIOHTTP1
import NIOPosix
import Proxy

/// A live upstream for `GatewayTest.run(.live, ...)`: an HTTP/1.1 server on loopback that
/// hands each request to the test's stub and writes back its answer (or, for an answer that
/// failed, closes the connection unanswered, as the simulation does).
enum StubServer {
    static func start(upstream: String, stub: @escaping @Sendable (UpstreamCall) -> SimulatedMessage, group: EventLoopGroup) async throws -> Channel {
        try await ServerBootstrap(group: group)
            .serverChannelOption(.socketOption(.so_reuseaddr), value: 1)
            .childChannelInitializer { channel in
                channel.eventLoop.makeCompletedFuture {
                    try channel.pipeline.syncOperations.configureHTTPServerPipeline()
                    try channel.pipeline.syncOperations.addHandler(Handler(upstream: upstream, stub: stub))
                }
            }
            .bind(host: "127.0.0.1", port: 0)
            .get()
    }

    final class Handler: ChannelInboundHandler {
        typealias InboundIn = HTTPServerRequestPart
        typealias OutboundOut = HTTPServerResponsePart

        let upstream: String
        let stub: @Sendable (UpstreamCall) -> SimulatedMessage
        private var request = SimulatedMessage()
        private var keepAlive = true

        init(upstream: String, stub: @escaping @Sendable (UpstreamCall) -> SimulatedMessage) {
            self.upstream = upstream
            self.stub = stub
        }

        func channelRead(context: ChannelHandlerContext, data: NIOAny) {
            switch unwrapInboundIn(data) {
            case .head(let head):
                request = SimulatedMessage(method: head.method.rawValue, target: head.uri, headers: head.headers.map { ($0.name, $0.value) })
                keepAlive = head.isKeepAlive
            case .body(var bytes):
                request.body += bytes.readBytes(length: bytes.readableBytes) ?? []
            case .end:
                let answer = stub(UpstreamCall(upstream: upstream, request: request))
                if answer.failure != nil {
                    context.close(promise: nil)
                    return
                }
                var headers = HTTPHeaders(answer.headers)
                if !headers.contains(name: "content-length") { headers.add(name: "Content-Length", value: "\(answer.body.count)") }
                if !keepAlive { headers.replaceOrAdd(name: "Connection", value: "close") }
                let status = HTTPResponseStatus(statusCode: answer.status == 0 ? 200 : answer.status)
                context.write(wrapOutboundOut(.head(HTTPResponseHead(version: .http1_1, status: status, headers: headers))), promise: nil)
                if !answer.body.isEmpty { context.write(wrapOutboundOut(.body(.byteBuffer(ByteBuffer(bytes: answer.body)))), promise: nil) }
                let close = !keepAlive
                context.writeAndFlush(wrapOutboundOut(.end(nil))).assumeIsolatedUnsafeUnchecked().whenComplete { _ in
                    if close { context.close(promise: nil) }
                }
            }
        }
    }
}
