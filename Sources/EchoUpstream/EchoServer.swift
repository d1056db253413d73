import Config
import NIOConcurrencyHelpers
import NIOCore
import NIOHTTP1
import NIOPosix

/// `moongate echo`: a small origin server for the sandbox and the tests. It answers with what it
/// received, and has paths that misbehave on purpose:
///
/// - `/status/N`: answers status N.
/// - `/delay/MS`: answers after MS milliseconds.
/// - `/bytes/N`: streams N bytes (`?chunked=1` for chunked framing), at the client's pace.
/// - `/trailers`: a chunked answer ending with trailer fields (`grpc-status: 0`,
///   `x-checksum: abc`, and a `content-length` a proxy must not pass on).
/// - `/close`: closes the connection without answering.
/// - `/linger-close/MS`: answers (kept alive), then closes the idle connection after MS ms,
///   as an origin's keep-alive timeout does.
/// - `/hop`: answers with hop-by-hop response headers a proxy must remove.
/// - `/stale-next`: answers, then closes the connection when the next request arrives on it
///   without answering (a pooled connection that went stale as it was reused).
/// - anything else: `200` with a JSON echo of method, path, headers and the body's size and checksum.
public enum EchoServer {
    /// Binds `host:port` (port 0 picks a free one) and serves until the channel closes.
    public static func start(host: String, port: Int, group: EventLoopGroup, stats: EchoStats? = nil) async throws -> Channel {
        try await ServerBootstrap(group: group)
            .serverChannelOption(.backlog, value: 1024)
            .serverChannelOption(.socketOption(.so_reuseaddr), value: 1)
            .childChannelInitializer { channel in
                stats?.accepted.withLockedValue { $0 += 1 }
                return channel.eventLoop.makeCompletedFuture {
                    try channel.pipeline.syncOperations.configureHTTPServerPipeline(withErrorHandling: true)
                    try channel.pipeline.syncOperations.addHandler(EchoHandler())
                }
            }
            .bind(host: host, port: port)
            .get()
    }
}

/// Counts what the echo server saw, for tests (keep-alive reuse shows as few connections).
public final class EchoStats: Sendable {
    public let accepted = NIOLockedValueBox(0)
    public init() {}
}

final class EchoHandler: ChannelInboundHandler {
    typealias InboundIn = HTTPServerRequestPart
    typealias OutboundOut = HTTPServerResponsePart

    private var head: HTTPRequestHead?
    private var dropNext = false
    private var bodyBytes = 0
    private var checksum = Checksum()
    private var streaming: (remaining: Int, chunked: Bool)?
    private var chunk: ByteBuffer?

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        switch unwrapInboundIn(data) {
        case .head(let h):
            if dropNext {
                context.close(promise: nil)
                return
            }
            head = h
            bodyBytes = 0
            checksum = Checksum()
        case .body(let buffer):
            bodyBytes += buffer.readableBytes
            checksum.update(buffer)
        case .end:
            guard let head else { return }
            respond(context: context, head: head)
        }
    }

    private func respond(context: ChannelHandlerContext, head: HTTPRequestHead) {
        let (path, query) = split(head.uri)
        let parts = path.split(separator: "/", omittingEmptySubsequences: true)
        switch (parts.first, parts.count) {
        case ("status", 2):
            let status = Int(parts[1]) ?? 500
            send(context: context, status: HTTPResponseStatus(statusCode: status), json: "{\"status\":\(status)}\n", request: head)
        case ("delay", 2):
            let ms = Int64(parts[1]) ?? 0
            let json = echo(head)
            let bound = NIOLoopBound((self, context), eventLoop: context.eventLoop)
            context.eventLoop.scheduleTask(in: .milliseconds(ms)) {
                let (handler, context) = bound.value
                handler.send(context: context, status: .ok, json: json, request: head)
            }
        case ("bytes", 2):
            let count = Int(parts[1]) ?? 0
            let chunked = query.contains("chunked=1")
            var headers = HTTPHeaders([("Content-Type", "application/octet-stream")])
            if chunked { headers.add(name: "Transfer-Encoding", value: "chunked") } else { headers.add(name: "Content-Length", value: String(count)) }
            context.write(wrapOutboundOut(.head(HTTPResponseHead(version: head.version, status: .ok, headers: headers))), promise: nil)
            var block = context.channel.allocator.buffer(capacity: 64 * 1024)
            block.writeRepeatingByte(UInt8(ascii: "x"), count: 64 * 1024)
            chunk = block
            streaming = (count, chunked)
            pump(context: context)
        case ("trailers", 1):
            let headers = HTTPHeaders([("Content-Type", "text/plain"), ("Transfer-Encoding", "chunked"), ("Trailer", "grpc-status, x-checksum")])
            context.write(wrapOutboundOut(.head(HTTPResponseHead(version: head.version, status: .ok, headers: headers))), promise: nil)
            context.write(wrapOutboundOut(.body(.byteBuffer(ByteBuffer(string: "body before trailers\n")))), promise: nil)
            let trailers = HTTPHeaders([("grpc-status", "0"), ("X-Checksum", "abc"), ("Content-Length", "99")])
            context.writeAndFlush(wrapOutboundOut(.end(trailers)), promise: nil)
        case ("close", 1):
            context.close(promise: nil)
        case ("linger-close", 2):
            send(context: context, status: .ok, json: echo(head), request: head)
            let bound = NIOLoopBound(context, eventLoop: context.eventLoop)
            context.eventLoop.scheduleTask(in: .milliseconds(Int64(parts[1]) ?? 0)) { bound.value.close(promise: nil) }
        case ("stale-next", 1):
            dropNext = true
            send(context: context, status: .ok, json: echo(head), request: head)
        case ("hop", 1):
            let headers = HTTPHeaders([
                ("Content-Length", "3"), ("Connection", "X-Hop-Resp"), ("X-Hop-Resp", "1"), ("Keep-Alive", "timeout=5"),
                ("Proxy-Authenticate", "Basic"), ("Upgrade", "h2c"), ("Trailer", "X-T"), ("X-Kept-Resp", "1"),
            ])
            context.write(wrapOutboundOut(.head(HTTPResponseHead(version: head.version, status: .ok, headers: headers))), promise: nil)
            context.write(wrapOutboundOut(.body(.byteBuffer(ByteBuffer(string: "hop")))), promise: nil)
            context.writeAndFlush(wrapOutboundOut(.end(nil)), promise: nil)
        default:
            send(context: context, status: .ok, json: echo(head), request: head)
        }
    }

    /// Writes the streamed body while the client keeps up; resumes on writability.
    private func pump(context: ChannelHandlerContext) {
        guard var state = streaming, let block = chunk else { return }
        while state.remaining > 0, context.channel.isWritable {
            let n = min(state.remaining, block.readableBytes)
            context.write(wrapOutboundOut(.body(.byteBuffer(block.getSlice(at: block.readerIndex, length: n)!))), promise: nil)
            state.remaining -= n
        }
        // Saved before flushing: a flush can report writability and re-enter this method.
        streaming = state.remaining == 0 ? nil : state
        if state.remaining == 0 {
            context.writeAndFlush(wrapOutboundOut(.end(nil)), promise: nil)
        } else {
            context.flush()
        }
    }

    func channelWritabilityChanged(context: ChannelHandlerContext) {
        if context.channel.isWritable { pump(context: context) }
    }

    private func send(context: ChannelHandlerContext, status: HTTPResponseStatus, json: String, request: HTTPRequestHead) {
        var body = context.channel.allocator.buffer(capacity: json.utf8.count)
        body.writeString(json)
        var headers = HTTPHeaders([("Content-Type", "application/json"), ("Content-Length", String(body.readableBytes))])
        if let user = request.headers.first(name: "X-User") { headers.add(name: "X-Seen-User", value: user) }
        if let debug = request.headers.first(name: "X-Debug") { headers.add(name: "X-Seen-Debug", value: debug) }
        context.write(wrapOutboundOut(.head(HTTPResponseHead(version: request.version, status: status, headers: headers))), promise: nil)
        context.write(wrapOutboundOut(.body(.byteBuffer(body))), promise: nil)
        context.writeAndFlush(wrapOutboundOut(.end(nil)), promise: nil)
    }

    private func echo(_ head: HTTPRequestHead) -> String {
        var fields: [String] = []
        for (name, value) in head.headers {
            fields.append("[\(JSONValue.quoted(name)),\(JSONValue.quoted(value))]")
        }
        return """
            {"method":\(JSONValue.quoted(head.method.rawValue)),"uri":\(JSONValue.quoted(head.uri)),\
            "version":"\(head.version.major).\(head.version.minor)","headers":[\(fields.joined(separator: ","))],\
            "body_bytes":\(bodyBytes),"body_checksum":"\(checksum.hex)"}

            """
    }

    private func split(_ uri: String) -> (Substring, Substring) {
        guard let q = uri.firstIndex(of: "?") else { return (Substring(uri), "") }
        return (uri[..<q], uri[uri.index(after: q)...])
    }
}

@available(*, unavailable)
extension EchoHandler: Sendable {}

/// FNV-1a over the body: enough to show that bytes arrived unchanged and in order.
struct Checksum {
    private var value: UInt64 = 0xcbf2_9ce4_8422_2325

    mutating func update(_ buffer: ByteBuffer) {
        buffer.withUnsafeReadableBytes { bytes in
            for b in bytes {
                value ^= UInt64(b)
                value = value &* 0x100_0000_01b3
            }
        }
    }

    var hex: String { String(value, radix: 16) }
}
