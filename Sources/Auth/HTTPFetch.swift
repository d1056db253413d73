import NIOCore
import NIOHTTP1
import NIOPosix

/// A small HTTP/1.1 GET on NIO, for the control plane (JWKS documents): never used on a
/// request's path. Bounded in size and time.
public enum HTTPFetch {
    public struct Response: Sendable {
        public var status: Int
        public var body: [UInt8]
        public var cacheControl: String?
    }

    public struct Failure: Error, CustomStringConvertible {
        public var description: String

        public init(description: String) { self.description = description }
    }

    public static func get(
        host: String, port: Int, path: String, group: EventLoopGroup, timeout: TimeAmount = .seconds(5), maxBytes: Int = 1 << 20
    ) async throws -> Response {
        let promise = group.next().makePromise(of: Response.self)
        let bootstrap = ClientBootstrap(group: group)
            .connectTimeout(timeout)
            .channelInitializer { channel in
                channel.eventLoop.makeCompletedFuture {
                    try channel.pipeline.syncOperations.addHTTPClientHandlers()
                    try channel.pipeline.syncOperations.addHandler(Collector(promise: promise, maxBytes: maxBytes))
                }
            }
        let channel: Channel
        do {
            channel = try await bootstrap.connect(host: host, port: port).get()
        } catch {
            promise.fail(error)
            throw error
        }
        let timer = channel.eventLoop.scheduleTask(in: timeout) {
            promise.fail(Failure(description: "no complete answer within \(timeout.nanoseconds / 1_000_000) ms"))
            channel.close(promise: nil)
        }
        var head = HTTPRequestHead(version: .http1_1, method: .GET, uri: path)
        head.headers.add(name: "Host", value: port == 80 ? host : "\(host):\(port)")
        head.headers.add(name: "Accept", value: "application/json")
        head.headers.add(name: "Connection", value: "close")
        channel.write(HTTPClientRequestPart.head(head), promise: nil)
        channel.writeAndFlush(HTTPClientRequestPart.end(nil), promise: nil)
        defer {
            timer.cancel()
            channel.close(promise: nil)
        }
        return try await promise.futureResult.get()
    }

    private final class Collector: ChannelInboundHandler {
        typealias InboundIn = HTTPClientResponsePart
        let promise: EventLoopPromise<Response>
        let maxBytes: Int
        var response = Response(status: 0, body: [], cacheControl: nil)
        var done = false

        func finish(_ result: Result<Response, Error>) {
            guard !done else { return }
            done = true
            promise.completeWith(result)
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
            case .body(var buffer):
                if response.body.count + buffer.readableBytes > maxBytes {
                    finish(.failure(Failure(description: "answer larger than \(maxBytes) bytes")))
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
            finish(.failure(Failure(description: "the connection closed before a complete answer")))
        }

        func errorCaught(context: ChannelHandlerContext, error: Error) {
            finish(.failure(error))
            context.close(promise: nil)
        }
    }

    /// `max-age` of a Cache-Control value, in seconds.
    public static func maxAge(_ cacheControl: String?) -> Int? {
        guard let cacheControl else { return nil }
        for directive in cacheControl.split(separator: ",") {
            let d = directive.trimmingCharacters(in: .whitespaces).lowercased()
            if d.hasPrefix("max-age="), let v = Int(d.dropFirst(8)), v >= 0 { return v }
        }
        return nil
    }
}

#if canImport(Foundation)
import Foundation
#endif
