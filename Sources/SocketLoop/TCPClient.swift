import Dispatch
import NIOCore
import NIOPosix

/// Opens client channels on whichever kind of loop the caller runs on: a ``SocketChannel`` on
/// a ``SocketLoop`` (the gateway's workers), NIO's own socket channel on a NIO loop (tests,
/// tools). The Redis client, the upstream pools and HTTP fetches all connect through here.
public enum TCPClient {
    /// Connects to `address` on `loop`, runs `initializer` on the new channel (add handlers
    /// there), then activates it. Fails with `ChannelError.connectTimeout` after `timeout`.
    public static func connect(
        to address: SocketAddress, on loop: EventLoop, timeout: TimeAmount,
        initializer: @escaping @Sendable (Channel) throws -> Void
    ) -> EventLoopFuture<Channel> {
        guard let socketLoop = loop as? SocketLoop else {
            return bootstrap(loop, timeout, initializer).connect(to: address)
        }
        let promise = loop.makePromise(of: Channel.self)
        socketLoop.execute {
            connectSocket(to: address, on: socketLoop, timeout: timeout) { result in
                switch result {
                case .success(let connection):
                    let channel = SocketChannel(connection)
                    do {
                        try initializer(channel)
                        try channel.activate()
                        promise.succeed(channel)
                    } catch {
                        channel.close(promise: nil)
                        promise.fail(error)
                    }
                case .failure(.timeout):
                    // As NIO's bootstraps fail, for the channel clients (Redis, HTTP fetches).
                    promise.fail(ChannelError.connectTimeout(timeout))
                case .failure(let error):
                    promise.fail(error)
                }
            }
        }
        return promise.futureResult
    }

    /// Connects a bare socket on `loop` (from the loop), for callers that take its events
    /// themselves: a timeout fails with `SocketError.timeout`, anything else with the
    /// `SocketError` and its `errno`.
    public static func connectSocket(
        to address: SocketAddress, on loop: SocketLoop, timeout: TimeAmount,
        _ completion: @escaping (Result<TCPConnection, SocketError>) -> Void
    ) {
        TCPConnection.connect(to: address, on: loop, timeout: timeout, completion)
    }

    /// Connects to `host`, a name or an address literal. Names are resolved off the loop
    /// (`getaddrinfo` blocks); the timeout starts after resolution.
    public static func connect(
        host: String, port: Int, on loop: EventLoop, timeout: TimeAmount,
        initializer: @escaping @Sendable (Channel) throws -> Void
    ) -> EventLoopFuture<Channel> {
        guard loop is SocketLoop else {
            return bootstrap(loop, timeout, initializer).connect(host: host, port: port)
        }
        if let address = try? SocketAddress(ipAddress: host, port: port) {
            return connect(to: address, on: loop, timeout: timeout, initializer: initializer)
        }
        let resolved = loop.makePromise(of: SocketAddress.self)
        DispatchQueue.global().async {
            resolved.completeWith(Result { try SocketAddress.makeAddressResolvingHost(host, port: port) })
        }
        return resolved.futureResult.flatMap { connect(to: $0, on: loop, timeout: timeout, initializer: initializer) }
    }

    private static func bootstrap(
        _ loop: EventLoop, _ timeout: TimeAmount, _ initializer: @escaping @Sendable (Channel) throws -> Void
    ) -> ClientBootstrap {
        ClientBootstrap(group: loop)
            .connectTimeout(timeout)
            .channelOption(.socketOption(.tcp_nodelay), value: 1)
            .channelInitializer { channel in
                channel.eventLoop.makeCompletedFuture { try initializer(channel) }
            }
    }
}

extension SocketLoop {
    /// The event loop running this thread: a `SocketLoop` (the gateway's workers) or one of
    /// NIO's (tests, tools); `nil` off every loop.
    public static var currentEventLoop: EventLoop? {
        if let loop = current { return loop }
        return MultiThreadedEventLoopGroup.currentEventLoop
    }
}
