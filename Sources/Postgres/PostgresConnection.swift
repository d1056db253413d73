import NIOCore
import NIOPosix
import Synchronization

/// A PostgreSQL connection for the control plane: statements pipelined on one socket, answered
/// in order, with text parameters and text results, and `LISTEN` notifications.
///
/// Why not PostgresNIO: it needs the whole of Foundation (string formatting, JSON and run loop
/// helpers), which with ICU's data tripled the gateway's binary. The config store needs a few
/// statements and notifications; this is that, and the protocol's state is a value
/// (`PostgresConnectionStateMachine`).
public final class PostgresConnection: Sendable {
    private let channel: any Channel
    private let handler: NIOLoopBound<PostgresChannelHandler>
    private let closedFlag: Atomic<Bool>

    public var isClosed: Bool { closedFlag.load(ordering: .acquiring) }

    private init(channel: any Channel, handler: NIOLoopBound<PostgresChannelHandler>) {
        self.channel = channel
        self.handler = handler
        closedFlag = Atomic(false)
    }

    /// Connects, authenticates (SCRAM-SHA-256, MD5, cleartext, or none) and waits until the
    /// server is ready for statements.
    public static func connect(
        host: String, port: Int, user: String, password: String?, database: String, on eventLoop: any EventLoop,
        timeout: TimeAmount = .seconds(10)
    ) async throws(PostgresError) -> PostgresConnection {
        let ready = eventLoop.makePromise(of: Void.self)
        let channel: any Channel
        do {
            channel = try await ClientBootstrap(group: eventLoop)
                .connectTimeout(timeout)
                .channelOption(.socketOption(.tcp_nodelay), value: 1)
                .channelInitializer { channel in
                    channel.eventLoop.makeCompletedFuture {
                        try channel.pipeline.syncOperations.addHandler(
                            PostgresChannelHandler(user: user, password: password, database: database, ready: ready))
                    }
                }
                .connect(host: host, port: port).get()
        } catch {
            ready.fail(error)
            throw .connection("\(host):\(port): \(error)")
        }
        let timer = eventLoop.scheduleTask(in: timeout) { ready.fail(PostgresError.connection("\(host):\(port): no answer in \(timeout)")) }
        do {
            try await ready.futureResult.get()
            timer.cancel()
        } catch {
            timer.cancel()
            channel.close(promise: nil)
            throw error as? PostgresError ?? .connection("\(error)")
        }
        let handler: NIOLoopBound<PostgresChannelHandler>
        do {
            handler = try await eventLoop.submit {
                NIOLoopBound(try channel.pipeline.syncOperations.handler(type: PostgresChannelHandler.self), eventLoop: eventLoop)
            }.get()
        } catch {
            channel.close(promise: nil)
            throw .connection("\(error)")
        }
        let connection = PostgresConnection(channel: channel, handler: handler)
        channel.closeFuture.whenComplete { _ in connection.closedFlag.store(true, ordering: .releasing) }
        return connection
    }

    /// Runs one statement: with `parameters` (`$1`, `$2`... as text; nil is NULL) through the
    /// extended protocol, without through a simple query (which may hold several statements).
    /// The rows come back as text columns.
    @discardableResult
    public func query(_ sql: String, _ parameters: [String?]? = nil) async throws(PostgresError) -> [[String?]] {
        let promise = channel.eventLoop.makePromise(of: [[String?]].self)
        let handler = self.handler
        channel.eventLoop.execute { handler.value.send(sql, parameters, promise) }
        do {
            return try await promise.futureResult.get()
        } catch {
            throw error as? PostgresError ?? .connection("\(error)")
        }
    }

    /// `LISTEN` on `channel`: each notification's payload, until the connection closes (then
    /// the stream ends).
    public func listen(_ name: String) async throws(PostgresError) -> AsyncStream<String> {
        let (stream, continuation) = AsyncStream.makeStream(of: String.self, bufferingPolicy: .bufferingNewest(64))
        let handler = self.handler
        try? await channel.eventLoop.submit { handler.value.listeners[name, default: []].append(continuation) }.get()
        try await query("LISTEN \"\(name.replacing("\"", with: "\"\""))\"")
        return stream
    }

    /// Ends the session (Terminate) and closes the socket.
    public func close() async {
        let handler = self.handler
        try? await channel.eventLoop.submit { handler.value.terminate() }.get()
        try? await channel.closeFuture.get()
    }
}

/// Drives `PostgresConnectionStateMachine` on a channel: frames backend messages, writes what
/// the machine asks for, and keeps the callers' promises in the order their requests went out.
final class PostgresChannelHandler: ChannelInboundHandler {
    typealias InboundIn = ByteBuffer
    typealias OutboundOut = ByteBuffer

    private var machine: PostgresConnectionStateMachine
    private let database: String
    private var ready: EventLoopPromise<Void>?
    private var waiting = CircularBuffer<EventLoopPromise<[[String?]]>>()
    private var buffer: ByteBuffer?
    private var context: ChannelHandlerContext?
    var listeners: [String: [AsyncStream<String>.Continuation]] = [:]

    init(user: String, password: String?, database: String, ready: EventLoopPromise<Void>) {
        machine = PostgresConnectionStateMachine(user: user, password: password)
        self.database = database
        self.ready = ready
    }

    func channelActive(context: ChannelHandlerContext) {
        self.context = context
        var out = context.channel.allocator.buffer(capacity: 128)
        PostgresWire.startup(user: machine.user, database: database, into: &out)
        context.writeAndFlush(wrapOutboundOut(out), promise: nil)
        context.fireChannelActive()
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        var incoming = unwrapInboundIn(data)
        if buffer == nil {
            buffer = incoming
        } else {
            buffer!.writeBuffer(&incoming)
        }
        while var pending = buffer {
            buffer = nil
            let message: PostgresWire.Backend?
            do {
                message = try PostgresWire.decode(&pending)
            } catch {
                fail(.protocolViolation("\(error)"))
                return
            }
            if pending.readableBytes > 0 { buffer = pending }
            guard let message else { break }
            perform(machine.receive(message), context: context)
            if case .closed = machine.state { return }
        }
        if buffer?.readerIndex ?? 0 > 64 * 1024 { buffer!.discardReadBytes() }
    }

    func channelInactive(context: ChannelHandlerContext) {
        fail(.connection("the server closed the connection"))
        context.fireChannelInactive()
    }

    func errorCaught(context: ChannelHandlerContext, error: any Error) {
        fail(.connection("\(error)"))
    }

    func send(_ sql: String, _ parameters: [String?]?, _ promise: EventLoopPromise<[[String?]]>) {
        guard let context, machine.requestSent() else {
            promise.fail(PostgresError.closed)
            return
        }
        waiting.append(promise)
        var out = context.channel.allocator.buffer(capacity: sql.utf8.count + 64)
        if let parameters {
            PostgresWire.extendedQuery(sql, parameters, into: &out)
        } else {
            PostgresWire.simpleQuery(sql, into: &out)
        }
        context.writeAndFlush(wrapOutboundOut(out), promise: nil)
    }

    func terminate() {
        guard let context else { return }
        if case .ready = machine.state {
            var out = context.channel.allocator.buffer(capacity: 5)
            PostgresWire.terminate(into: &out)
            context.writeAndFlush(wrapOutboundOut(out), promise: nil)
        }
        fail(.closed)
    }

    private func perform(_ action: PostgresConnectionStateMachine.Action, context: ChannelHandlerContext) {
        switch action {
        case .none:
            break
        case .sendPassword(let bytes, let cString):
            var out = context.channel.allocator.buffer(capacity: bytes.count + 8)
            PostgresWire.password(bytes, cString: cString, into: &out)
            context.writeAndFlush(wrapOutboundOut(out), promise: nil)
        case .sendSASLInitial(let mechanism, let bytes):
            var out = context.channel.allocator.buffer(capacity: bytes.count + 32)
            PostgresWire.saslInitialResponse(mechanism: mechanism, bytes, into: &out)
            context.writeAndFlush(wrapOutboundOut(out), promise: nil)
        case .connected:
            ready?.succeed(())
            ready = nil
        case .answer(let result):
            waiting.popFirst()?.completeWith(result.mapError { $0 as any Error })
        case .notify(let channel, let payload):
            for continuation in listeners[channel] ?? [] { continuation.yield(payload) }
        case .fail(let error):
            fail(error)
        }
    }

    /// Fails everything waiting and closes (once).
    private func fail(_ error: PostgresError) {
        machine.closed()
        ready?.fail(error)
        ready = nil
        while let promise = waiting.popFirst() { promise.fail(error) }
        for continuation in listeners.values.joined() { continuation.finish() }
        listeners = [:]
        if let context {
            self.context = nil
            context.close(promise: nil)
        }
    }
}
