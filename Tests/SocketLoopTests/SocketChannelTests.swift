import Dispatch
import Glibc
import NIOCore
import NIOPosix
import SocketLoop
import Testing

/// `SocketChannel`: NIO handlers on the loop's sockets, with NIO's event order, write promises,
/// `read()`/`autoRead`, errors and connects.
@Suite struct SocketChannelTests {
    @Test func handlersSeeNIOsEventsInNIOsOrder() async throws {
        let loop = try SocketLoop(name: "t")
        defer { loop.stop() }
        let server = try await Server.start(on: loop) { try $0.pipeline.syncOperations.addHandler(Echo()) }
        let recorder = Recorder()
        let channel = try await TCPClient.connect(to: server.address, on: loop, timeout: .seconds(1)) {
            try $0.pipeline.syncOperations.addHandler(recorder)
        }.get()
        #expect(channel.isActive)
        #expect(channel.remoteAddress == server.address)
        #expect((channel.localAddress?.port ?? 0) != 0)
        let written = send(channel, ByteBuffer(string: "ping"))
        try await written.get()
        try await recorder.received(4, on: loop)
        try await channel.close()
        try await channel.closeFuture.get()
        let events = try await loop.submit { recorder.events }.get()
        #expect(events == ["added", "registered", "active", "read:ping", "readComplete", "inactive", "unregistered", "removed"])
        #expect(!channel.isActive)
        await #expect(throws: ChannelError.alreadyClosed) { try await channel.close() }
    }

    /// A peer that does not read: the write's promise waits (the kernel has not taken the
    /// bytes), the channel turns unwritable, and closing fails what is still queued.
    @Test func writePromisesWaitForTheKernelAndFailOnClose() async throws {
        let loop = try SocketLoop(name: "t")
        defer { loop.stop() }
        let server = try await Server.start(on: loop) { try $0.syncOptions!.setOption(.autoRead, value: false) }
        let recorder = Recorder()
        let channel = try await TCPClient.connect(to: server.address, on: loop, timeout: .seconds(1)) {
            try $0.pipeline.syncOperations.addHandler(recorder)
        }.get()
        let big = ByteBuffer(repeating: 7, count: 64 * 1024 * 1024)
        let first = send(channel, big)
        let marker = send(channel, ByteBuffer())
        try await Task.sleep(for: .milliseconds(200))
        let state = try await loop.submit { (channel.isWritable, recorder.events.filter { $0.hasPrefix("writable") }) }.get()
        #expect(state.0 == false)
        #expect(state.1 == ["writable:false"])
        try await channel.close()
        await #expect(throws: ChannelError.ioOnClosedChannel) { try await first.get() }
        await #expect(throws: ChannelError.ioOnClosedChannel) { try await marker.get() }
        await #expect(throws: ChannelError.ioOnClosedChannel) { try await send(channel, ByteBuffer(string: "late")).get() }
    }

    @Test func withoutAutoReadEachReadCallDeliversOneEvent() async throws {
        let loop = try SocketLoop(name: "t")
        defer { loop.stop() }
        let recorder = Recorder()
        let accepted = loop.makePromise(of: Channel.self)
        let server = try await Server.start(on: loop) {
            try $0.syncOptions!.setOption(.autoRead, value: false)
            try $0.pipeline.syncOperations.addHandler(recorder)
            accepted.succeed($0)
        }
        let client = try await TCPClient.connect(to: server.address, on: loop, timeout: .seconds(1)) { _ in }.get()
        let serverSide = try await accepted.futureResult.get()
        try await client.writeAndFlush(ByteBuffer(string: "a")).get()
        try await Task.sleep(for: .milliseconds(100))
        #expect(try await loop.submit { recorder.bytes }.get() == "")
        serverSide.read()
        try await recorder.received(1, on: loop)
        try await client.writeAndFlush(ByteBuffer(string: "b")).get()
        try await Task.sleep(for: .milliseconds(100))
        #expect(try await loop.submit { recorder.bytes }.get() == "a")
        try await serverSide.setOption(.autoRead, value: true).get()
        #expect(try await serverSide.getOption(.autoRead).get() == true)
        try await recorder.received(2, on: loop)
        try await client.writeAndFlush(ByteBuffer(string: "cd")).get()
        try await recorder.received(4, on: loop)
        #expect(try await loop.submit { recorder.bytes }.get() == "abcd")
        try await client.close()
    }

    @Test func aResetReachesErrorCaughtThenInactive() async throws {
        let loop = try SocketLoop(name: "t")
        defer { loop.stop() }
        let recorder = Recorder()
        let server = try await Server.start(on: loop) { try $0.pipeline.syncOperations.addHandler(recorder) }
        let fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
        #expect(server.address.withSockAddr { connect(fd, $0, socklen_t($1)) } == 0)
        try await loop.submit {}.get()
        var linger = Glibc.linger(l_onoff: 1, l_linger: 0)
        setsockopt(fd, SOL_SOCKET, SO_LINGER, &linger, socklen_t(MemoryLayout<Glibc.linger>.size))
        close(fd)
        try await recorder.closed(on: loop)
        let events = try await loop.submit { recorder.events }.get()
        #expect(events.contains { $0.hasPrefix("error:read") && $0.contains("errno \(ECONNRESET)") })
        #expect(Array(events.suffix(3)) == ["inactive", "unregistered", "removed"])
    }

    @Test func connectsByNameAndReportsRefusalsAndTimeouts() async throws {
        let loop = try SocketLoop(name: "t")
        defer { loop.stop() }
        let server = try await Server.start(on: loop) { try $0.pipeline.syncOperations.addHandler(Echo()) }
        let byName = try await TCPClient.connect(host: "localhost", port: server.address.port!, on: loop, timeout: .seconds(1)) { _ in }.get()
        #expect(byName.eventLoop === loop)
        try await byName.close()

        let freePort = try await loop.submit { () -> Int in
            let l = try TCPListener(address: try SocketAddress(ipAddress: "127.0.0.1", port: 0), on: loop) { $0.close() }
            defer { l.close() }
            return l.localAddress.port!
        }.get()
        do {
            _ = try await TCPClient.connect(host: "127.0.0.1", port: freePort, on: loop, timeout: .seconds(1)) { _ in }.get()
            Issue.record("connected to a closed port")
        } catch let error as SocketError {
            #expect(error.errno == ECONNREFUSED)
        }

        // A listener whose accept queue is full drops further SYNs: the connect hangs.
        let full = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
        defer { close(full) }
        var any = sockaddr_in(sin_family: sa_family_t(AF_INET), sin_port: 0, sin_addr: in_addr(s_addr: inet_addr("127.0.0.1")), sin_zero: (0, 0, 0, 0, 0, 0, 0, 0))
        _ = withUnsafePointer(to: &any) { $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { bind(full, $0, socklen_t(MemoryLayout<sockaddr_in>.size)) } }
        listen(full, 0)
        var length = socklen_t(MemoryLayout<sockaddr_in>.size)
        _ = withUnsafeMutablePointer(to: &any) { $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { getsockname(full, $0, &length) } }
        let fullPort = Int(UInt16(bigEndian: any.sin_port))
        var fillers: [Channel] = []
        var timedOut = false
        for _ in 0..<8 where !timedOut {
            do {
                fillers.append(try await TCPClient.connect(host: "127.0.0.1", port: fullPort, on: loop, timeout: .milliseconds(300)) { _ in }.get())
            } catch ChannelError.connectTimeout(let after) {
                #expect(after == .milliseconds(300))
                timedOut = true
            }
        }
        #expect(timedOut)
        for filler in fillers { try? await filler.close() }
        #expect(try await loop.submit { loop.timerCount }.get() == 0)
    }

    @Test func clientsOnNIOLoopsStillUseNIOsChannels() async throws {
        let loop = try SocketLoop(name: "t")
        defer { loop.stop() }
        let server = try await Server.start(on: loop) { try $0.pipeline.syncOperations.addHandler(Echo()) }
        let group = MultiThreadedEventLoopGroup(numberOfThreads: 1)
        let recorder = Recorder()
        let channel = try await TCPClient.connect(to: server.address, on: group.next(), timeout: .seconds(1)) {
            try $0.pipeline.syncOperations.addHandler(recorder)
        }.get()
        #expect(!(channel is SocketChannel))
        try await channel.writeAndFlush(ByteBuffer(string: "nio")).get()
        try await recorder.received(3, on: channel.eventLoop)
        try await channel.close()
        try await group.shutdownGracefully()
    }

    @Test func theLoopKnowsItIsCurrentAndGroupsSpreadWork() async throws {
        let group = try SocketLoopGroup(count: 2, name: "g")
        defer { for loop in group.loops { loop.stop() } }
        #expect(SocketLoop.current == nil)
        let first = group.next(), second = group.next()
        #expect(first !== second)
        #expect(try await first.submit { SocketLoop.current === first && group.next() === first }.get())
    }
}

// MARK: helpers

/// A write whose future completes when the channel says so (the async `writeAndFlush` waits).
func send(_ channel: Channel, _ bytes: ByteBuffer) -> EventLoopFuture<Void> {
    let promise = channel.eventLoop.makePromise(of: Void.self)
    channel.writeAndFlush(bytes, promise: promise)
    return promise.futureResult
}

/// A `TCPListener` whose connections become `SocketChannel`s set up by `initialize`.
struct Server {
    let address: SocketAddress

    static func start(on loop: SocketLoop, initialize: @escaping @Sendable (Channel) throws -> Void) async throws -> Server {
        try await loop.submit {
            let listener = try TCPListener(address: try SocketAddress(ipAddress: "127.0.0.1", port: 0), on: loop) { connection in
                let channel = SocketChannel(connection)
                do {
                    try initialize(channel)
                    try channel.activate()
                } catch {
                    channel.close(promise: nil)
                }
            }
            return Server(address: listener.localAddress)
        }.get()
    }
}

final class Echo: ChannelInboundHandler, Sendable {
    typealias InboundIn = ByteBuffer
    typealias OutboundOut = ByteBuffer
    func channelRead(context: ChannelHandlerContext, data: NIOAny) { context.write(data, promise: nil) }
    func channelReadComplete(context: ChannelHandlerContext) { context.flush() }
}

/// Writes down what reaches it, on its channel's loop.
final class Recorder: ChannelInboundHandler, @unchecked Sendable {
    typealias InboundIn = ByteBuffer
    var events: [String] = []
    var bytes = ""
    private var waiters: [(check: () -> Bool, promise: EventLoopPromise<Void>)] = []

    func received(_ count: Int, on loop: EventLoop) async throws {
        try await wait(on: loop) { self.bytes.utf8.count >= count }
    }

    func closed(on loop: EventLoop) async throws {
        try await wait(on: loop) { self.events.last == "removed" }
    }

    private func wait(on loop: EventLoop, _ check: @escaping @Sendable () -> Bool) async throws {
        let future = try await loop.submit { () -> EventLoopFuture<Void> in
            let promise = loop.makePromise(of: Void.self)
            if check() { promise.succeed() } else { self.waiters.append((check, promise)) }
            return promise.futureResult
        }.get()
        try await future.get()
    }

    private func note(_ event: String) {
        events.append(event)
        waiters.removeAll { waiter in
            guard waiter.check() else { return false }
            waiter.promise.succeed()
            return true
        }
    }

    func handlerAdded(context: ChannelHandlerContext) { note("added") }
    func handlerRemoved(context: ChannelHandlerContext) { note("removed") }
    func channelRegistered(context: ChannelHandlerContext) { note("registered") }
    func channelUnregistered(context: ChannelHandlerContext) { note("unregistered") }
    func channelActive(context: ChannelHandlerContext) { note("active") }
    func channelInactive(context: ChannelHandlerContext) { note("inactive") }
    func channelReadComplete(context: ChannelHandlerContext) { note("readComplete") }
    func errorCaught(context: ChannelHandlerContext, error: Error) { note("error:\(error)") }
    func channelWritabilityChanged(context: ChannelHandlerContext) { note("writable:\(context.channel.isWritable)") }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        let buffer = unwrapInboundIn(data)
        bytes += String(buffer: buffer)
        note("read:\(String(buffer: buffer))")
    }
}
