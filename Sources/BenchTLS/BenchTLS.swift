import ArgumentParser
import NIOCore
import NIOPosix
import NIOSSL
import SocketLoop
import TLS

/// `moongate-bench-tls`: one thread serving a fixed HTTP answer over TLS, on our OpenSSL
/// streams (`TLSStream` on a `SocketLoop`, as the gateway's listeners) or on swift-nio-ssl
/// (`NIOSSLServerHandler` in a NIO pipeline), so `scripts/bench --tls-engines` can measure
/// the TLS library choice alone: same certificate, same answer, same load. Hidden from help.
struct BenchTLS: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "moongate-bench-tls", abstract: "Serve a fixed answer over TLS on one thread (for scripts/bench --tls-engines).")

    @Option(help: "openssl (ours) or nio-ssl.")
    var engine = "openssl"
    @Option var port = 8443
    @Option var cert: String
    @Option var key: String

    /// Each read is taken as one whole request (wrk sends one at a time): the answer, and a
    /// close after it when the request said `Connection: close`.
    static let answer = "HTTP/1.1 200 OK\r\nContent-Length: 5\r\nContent-Type: text/plain\r\n\r\nhello"
    static let closingAnswer = "HTTP/1.1 200 OK\r\nContent-Length: 5\r\nContent-Type: text/plain\r\nConnection: close\r\n\r\nhello"

    static func wantsClose(_ bytes: ByteBuffer) -> Bool {
        bytes.withUnsafeReadableBytes { raw in
            let needle = Array("onnection: close".utf8)
            guard raw.count >= needle.count else { return false }
            for i in 0...(raw.count - needle.count) where raw[i] == needle[0] {
                if (1..<needle.count).allSatisfy({ raw[i + $0] == needle[$0] }) { return true }
            }
            return false
        }
    }

    func run() throws {
        switch engine {
        case "openssl": try runOpenSSL()
        case "nio-ssl": try runNIOSSL()
        default: throw ValidationError("--engine is openssl or nio-ssl")
        }
    }

    private final class Responder: ByteStreamDelegate, Sendable {
        func streamRead(_ stream: any ByteStream, _ bytes: ByteBuffer) {
            if BenchTLS.wantsClose(bytes) {
                stream.write(ByteBuffer(string: BenchTLS.closingAnswer), promise: nil)
                stream.closeAfterFlush()
            } else {
                stream.write(ByteBuffer(string: BenchTLS.answer), promise: nil)
            }
        }
        func streamReadComplete(_ stream: any ByteStream) { stream.flush() }
        func streamClosed(_ stream: any ByteStream, error: SocketError?) {}
    }

    private func runOpenSSL() throws {
        let certificates = try TLSCertificates([TLSCertificates.Source(cert: cert, key: key)])
        let loop = try SocketLoop(name: "bench-tls")
        let responder = Responder()
        let address = try SocketAddress(ipAddress: "127.0.0.1", port: port)
        let listener = try loop.submit {
            let listener = try TCPListener(address: address, on: loop) { connection in
                guard let stream = try? TLSStream(serving: connection, certificates: certificates) else { return connection.close() }
                stream.delegate = responder
                try? connection.start(delegate: stream)
            }
            return NIOLoopBound(listener, eventLoop: loop)
        }.wait()
        print("bench-tls openssl listening on 127.0.0.1:\(port)")
        _ = listener
        while true { pause() }
    }

    private final class NIOResponder: ChannelInboundHandler, @unchecked Sendable {
        typealias InboundIn = ByteBuffer
        typealias OutboundOut = ByteBuffer
        func channelRead(context: ChannelHandlerContext, data: NIOAny) {
            let bytes = unwrapInboundIn(data)
            if BenchTLS.wantsClose(bytes) {
                // The close follows the write in the pipeline: sent first, then closed (as ours).
                context.writeAndFlush(wrapOutboundOut(ByteBuffer(string: BenchTLS.closingAnswer)), promise: nil)
                context.close(promise: nil)
            } else {
                context.write(wrapOutboundOut(ByteBuffer(string: BenchTLS.answer)), promise: nil)
            }
        }
        func channelReadComplete(context: ChannelHandlerContext) { context.flush() }
    }

    private func runNIOSSL() throws {
        var configuration = TLSConfiguration.makeServerConfiguration(
            certificateChain: try NIOSSLCertificate.fromPEMFile(cert).map { .certificate($0) },
            privateKey: .privateKey(try NIOSSLPrivateKey(file: key, format: .pem)))
        configuration.minimumTLSVersion = .tlsv12
        configuration.applicationProtocols = ["http/1.1"]
        let context = try NIOSSLContext(configuration: configuration)
        let group = MultiThreadedEventLoopGroup(numberOfThreads: 1)
        let channel = try ServerBootstrap(group: group)
            .serverChannelOption(.backlog, value: 4096)
            .serverChannelOption(.socketOption(.so_reuseaddr), value: 1)
            .childChannelInitializer { channel in
                channel.eventLoop.makeCompletedFuture {
                    try channel.pipeline.syncOperations.addHandler(NIOSSLServerHandler(context: context))
                    try channel.pipeline.syncOperations.addHandler(NIOResponder())
                }
            }
            .bind(host: "127.0.0.1", port: port).wait()
        print("bench-tls nio-ssl listening on 127.0.0.1:\(port)")
        try channel.closeFuture.wait()
    }
}
