import Dispatch
import Glibc
import NIOConcurrencyHelpers
import NIOCore
import NIOPosix
import SocketLoop
import Testing

/// The loop as an `EventLoop`: tasks, timers, futures across threads.
@Suite struct SocketLoopTaskTests {
    @Test func tasksRunInOrderOnTheLoopsThread() async throws {
        let loop = try SocketLoop(name: "t")
        defer { loop.stop() }
        let order = try await loop.flatSubmit { () -> EventLoopFuture<[Int]> in
            precondition(loop.inEventLoop)
            var seen: [Int] = []
            // Queued from the loop itself: no lock, run on a later turn, in order.
            let promise = loop.makePromise(of: [Int].self)
            for i in 0..<5 {
                loop.assumeIsolatedUnsafeUnchecked().execute { seen.append(i); if i == 4 { promise.succeed(seen) } }
            }
            return promise.futureResult
        }.get()
        #expect(order == [0, 1, 2, 3, 4])
    }

    @Test func executeFromOtherThreadsWakesTheLoop() async throws {
        let loop = try SocketLoop(name: "t")
        defer { loop.stop() }
        #expect(!loop.inEventLoop)
        let counter = LoopCounter()
        let threads = 4, each = 500
        await withTaskGroup(of: Void.self) { group in
            for _ in 0..<threads {
                group.addTask {
                    for _ in 0..<each { loop.execute { counter.value += 1 } }
                }
            }
        }
        let total = try await loop.submit { counter.value }.get()
        #expect(total == threads * each)
    }

    @Test func scheduledTasksFireAtTheirDeadlineAndCancelledOnesNever() async throws {
        let loop = try SocketLoop(name: "t")
        defer { loop.stop() }
        let started = NIODeadline.now()
        let late = loop.scheduleTask(in: .seconds(2)) { "late" }
        let early = loop.scheduleTask(in: .milliseconds(30)) { NIODeadline.now() }
        let cancelled = loop.scheduleTask(in: .milliseconds(40)) { Issue.record("a cancelled task ran") }
        cancelled.cancel()
        let firedAt = try await early.futureResult.get()
        #expect(firedAt - started >= .milliseconds(30))
        #expect(firedAt - started < .milliseconds(1500))  // not held back by the later one
        await #expect(throws: EventLoopError.cancelled) { try await cancelled.futureResult.get() }
        #expect(try await late.futureResult.get() == "late")
        #expect(try await loop.submit { loop.timerCount }.get() == 0)
    }

    @Test func manyTimersSetAndCancelledLeaveNothingBehind() async throws {
        let loop = try SocketLoop(name: "t")
        defer { loop.stop() }
        let fired = try await loop.submit { () -> Int in
            var handles: [SocketLoop.TimerHandle] = []
            for i in 0..<10_000 { handles.append(loop.setTimer(at: .now() + .seconds(60 + Int64(i % 7))) {}) }
            for h in handles.shuffled() { precondition(loop.cancelTimer(h)) }
            return loop.timerCount
        }.get()
        #expect(fired == 0)
        // Fire order follows deadlines, whatever the insertion order.
        let order = try await loop.flatSubmit { () -> EventLoopFuture<[Int]> in
            let promise = loop.makePromise(of: [Int].self)
            var seen: [Int] = []
            let now = NIODeadline.now()
            for i in [5, 1, 4, 2, 3] {
                _ = loop.setTimer(at: now + .milliseconds(Int64(i * 10))) {
                    seen.append(i)
                    if seen.count == 5 { promise.succeed(seen) }
                }
            }
            return promise.futureResult
        }.get()
        #expect(order == [1, 2, 3, 4, 5])
    }

    @Test func futuresHopBetweenNIOAndTheLoop() async throws {
        let loop = try SocketLoop(name: "t")
        defer { loop.stop() }
        let group = MultiThreadedEventLoopGroup(numberOfThreads: 1)
        defer { group.shutdownGracefully { _ in } }
        let nio = group.next()
        let value = try await nio.submit { 41 }.hop(to: loop).map { v -> Int in
            precondition(loop.inEventLoop)
            return v + 1
        }.hop(to: nio).get()
        #expect(value == 42)
    }

    @Test func shutdownCallsBackOnceTheThreadHasStopped() async throws {
        let loop = try SocketLoop(name: "t")
        await withCheckedContinuation { (c: CheckedContinuation<Void, Never>) in
            loop.shutdownGracefully(queue: .global()) { error in
                #expect(error == nil)
                c.resume()
            }
        }
    }

    /// A stopped loop refuses work: a task from another thread is dropped, never written to
    /// the wake-up descriptor the loop closed (whose number a new file now holds).
    @Test func aStoppedLoopRefusesWorkAndWritesToNoReusedDescriptor() async throws {
        let loop = try SocketLoop(name: "t")
        loop.stop()
        #expect(loop.isStopped)
        // The descriptors the loop closed are the lowest free numbers now: a pipe takes them.
        var fds: [Int32] = [0, 0]
        #expect(pipe(&fds) == 0)
        var more: [Int32] = [0, 0]
        #expect(pipe(&more) == 0)
        for fd in fds + more { _ = fcntl(fd, F_SETFL, O_NONBLOCK) }
        defer { for fd in fds + more { close(fd) } }
        let before = SocketLoop.refusedAfterStop
        await withTaskGroup(of: Void.self) { group in
            for _ in 0..<4 { group.addTask { for _ in 0..<100 { loop.execute {} } } }
        }
        #expect(SocketLoop.refusedAfterStop >= before + 400)
        for fd in [fds[0], more[0]] {
            var byte: UInt8 = 0
            #expect(read(fd, &byte, 1) == -1 && errno == EAGAIN, "nothing was written to a reused descriptor")
        }
    }

    /// A question to a loop that is stuck in a task gets no answer after its time, instead of
    /// blocking whoever asked (shutdown) for ever.
    @Test func answerGivesUpOnAStuckLoop() async throws {
        let loop = try SocketLoop(name: "t")
        let release = ConditionLock(value: 0)
        loop.execute {
            release.lock(whenValue: 1)
            release.unlock()
        }
        let start = ContinuousClock.now
        let answer = await loop.answer(within: .milliseconds(100)) { 42 }
        #expect(answer == nil)
        // Within the time and the delay of a busy machine's timer queue (other suites block
        // its threads): what matters is that it returns at all.
        #expect(ContinuousClock.now - start < .seconds(60))
        release.lock()
        release.unlock(withValue: 1)
        #expect(await loop.answer(within: .seconds(5)) { 42 } == 42)
        loop.stop()
    }
}

/// Sockets: accept, echo, back-pressure, end of stream, refused connects.
@Suite struct SocketLoopTCPTests {
    @Test func echoesOverAcceptedAndConnectedSockets() async throws {
        let loop = try SocketLoop(name: "t")
        defer { loop.stop() }
        let echo = try await loop.submit { try EchoServer(on: loop) }.get()
        let reply = try await loop.flatSubmit { () -> EventLoopFuture<String> in
            let promise = loop.makePromise(of: String.self)
            TCPConnection.connect(to: echo.address, on: loop, timeout: .seconds(1)) { result in
                switch result {
                case .failure(let error): promise.fail(error)
                case .success(let connection):
                    let collector = Collector(until: 11) { promise.succeed(String(buffer: $0)) }
                    try! connection.start(delegate: collector)
                    connection.writeAndFlush(ByteBuffer(string: "hello world"))
                }
            }
            return promise.futureResult
        }.get()
        #expect(reply == "hello world")
        // The listener, the accepted socket and the client.
        #expect(try await loop.submit { loop.registeredCount }.get() == 3)
    }

    /// A reader that stops reading: the writer's queue crosses the high watermark, it stops
    /// writing, and memory stays bounded; resumed, everything arrives intact.
    @Test func backPressureBoundsTheQueueAndLosesNothing() async throws {
        let loop = try SocketLoop(name: "t")
        defer { loop.stop() }
        let total = 4 * 1024 * 1024
        let result = try await loop.flatSubmit { () -> EventLoopFuture<(Int, Int, UInt64)> in
            let promise = loop.makePromise(of: (Int, Int, UInt64).self)
            let sink = Sink(expected: total) { _, _ in }
            var maxQueued = 0
            let listener = try! TCPListener(address: try! SocketAddress(ipAddress: "127.0.0.1", port: 0), on: loop) { c in
                try! c.start(delegate: sink)
                sink.connection = c
                c.pauseReads()
                // Let the writer fill the socket buffers, then drain.
                _ = loop.setTimer(at: .now() + .milliseconds(200)) { c.resumeReads() }
            }
            TCPConnection.connect(to: listener.localAddress, on: loop, timeout: .seconds(1)) { result in
                let connection = try! result.get()
                let source = Source(total: total, connection: connection) { maxQueued = max(maxQueued, $0) }
                try! connection.start(delegate: source)
                source.pump()
                sink.onDone = { received, checksum in
                    listener.close()
                    promise.succeed((received, maxQueued, checksum))
                    _ = source
                }
            }
            return promise.futureResult
        }.get()
        #expect(result.0 == total)
        #expect(result.2 == Source.checksum(total))
        // One chunk past the high watermark at most.
        #expect(result.1 <= 64 * 1024 + Source.chunk)
    }

    @Test func endOfStreamClosesAndTellsTheDelegate() async throws {
        let loop = try SocketLoop(name: "t")
        defer { loop.stop() }
        let echo = try await loop.submit { try EchoServer(on: loop) }.get()
        let closed = try await loop.flatSubmit { () -> EventLoopFuture<String> in
            let promise = loop.makePromise(of: String.self)
            TCPConnection.connect(to: echo.address, on: loop, timeout: .seconds(1)) { result in
                let connection = try! result.get()
                let watcher = CloseWatcher { promise.succeed($0.map { "\($0)" } ?? "orderly") }
                try! connection.start(delegate: watcher)
                // The server closes after echoing a "bye".
                connection.writeAndFlush(ByteBuffer(string: "bye"))
            }
            return promise.futureResult
        }.get()
        #expect(closed == "orderly")
        #expect(try await loop.submit { loop.registeredCount }.get() == 1)  // the listener
    }

    @Test func aRefusedConnectFailsWithTheSystemsReason() async throws {
        let loop = try SocketLoop(name: "t")
        defer { loop.stop() }
        // A port just released: nothing listens there.
        let port = try await loop.submit { () -> Int in
            let l = try TCPListener(address: try SocketAddress(ipAddress: "127.0.0.1", port: 0), on: loop) { $0.close() }
            defer { l.close() }
            return l.localAddress.port!
        }.get()
        let error = try await loop.flatSubmit { () -> EventLoopFuture<SocketError?> in
            let promise = loop.makePromise(of: SocketError?.self)
            TCPConnection.connect(to: try! SocketAddress(ipAddress: "127.0.0.1", port: port), on: loop, timeout: .seconds(1)) {
                switch $0 {
                case .success: promise.succeed(nil)
                case .failure(let e): promise.succeed(e)
                }
            }
            return promise.futureResult
        }.get()
        #expect(error?.errno == ECONNREFUSED)
        #expect(try await loop.submit { loop.registeredCount + loop.timerCount }.get() == 0)
    }

    @Test func stoppingTheLoopClosesItsSockets() async throws {
        let loop = try SocketLoop(name: "t")
        let echo = try await loop.submit { try EchoServer(on: loop) }.get()
        loop.stop()
        // Nothing listens any more.
        let fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
        defer { close(fd) }
        let rc = echo.address.withSockAddr { connect(fd, $0, socklen_t($1)) }
        #expect(rc != 0)
    }
}

// MARK: helpers

final class LoopCounter: @unchecked Sendable {
    var value = 0
}

final class EchoServer: ByteStreamDelegate, @unchecked Sendable {
    let address: SocketAddress
    private var listener: TCPListener!

    init(on loop: SocketLoop) throws {
        var made: TCPListener!
        let box = Box()
        made = try TCPListener(address: try SocketAddress(ipAddress: "127.0.0.1", port: 0), on: loop) { c in
            try? c.start(delegate: box.server!)
        }
        address = made.localAddress
        listener = made
        box.server = self
    }

    final class Box { var server: EchoServer? }

    func streamRead(_ connection: ByteStream, _ bytes: ByteBuffer) {
        if bytes.getString(at: bytes.readerIndex, length: bytes.readableBytes) == "bye" {
            connection.write(bytes)
            connection.closeAfterFlush()
            return
        }
        connection.write(bytes)
    }

    func streamReadComplete(_ connection: ByteStream) { connection.flush() }
    func streamClosed(_ connection: ByteStream, error: SocketError?) {}
}

final class Collector: ByteStreamDelegate {
    var received = ByteBuffer()
    let until: Int
    let done: (ByteBuffer) -> Void
    init(until: Int, done: @escaping (ByteBuffer) -> Void) {
        self.until = until
        self.done = done
    }
    func streamRead(_ connection: ByteStream, _ bytes: ByteBuffer) {
        var bytes = bytes
        received.writeBuffer(&bytes)
        if received.readableBytes >= until { done(received) }
    }
    func streamClosed(_ connection: ByteStream, error: SocketError?) {}
}

final class CloseWatcher: ByteStreamDelegate {
    let closed: (SocketError?) -> Void
    init(_ closed: @escaping (SocketError?) -> Void) { self.closed = closed }
    func streamRead(_ connection: ByteStream, _ bytes: ByteBuffer) {}
    func streamClosed(_ connection: ByteStream, error: SocketError?) { closed(error) }
}

/// Writes `total` bytes of a known pattern, only while the connection is writable.
final class Source: ByteStreamDelegate {
    static let chunk = 16 * 1024
    let total: Int
    var sent = 0
    let connection: TCPConnection
    let queued: (Int) -> Void
    init(total: Int, connection: TCPConnection, queued: @escaping (Int) -> Void) {
        self.total = total
        self.connection = connection
        self.queued = queued
    }
    /// Byte i of the stream is i mod 251: a prime period, so a lost, repeated or reordered
    /// chunk changes the checksum.
    static let pattern: [UInt8] = (0..<(251 * 70)).map { UInt8($0 % 251) }
    static func checksum(_ n: Int) -> UInt64 {
        var sum: UInt64 = 0
        for i in 0..<n { sum = sum &* 1_000_003 &+ UInt64(i % 251) }
        return sum
    }
    func pump() {
        while connection.isWritable, sent < total {
            let n = min(Self.chunk, total - sent)
            let start = sent % 251
            let buffer = ByteBuffer(bytes: Self.pattern[start..<(start + n)])
            sent += n
            connection.write(buffer)
            queued(connection.pendingBytes)
            connection.flush()
        }
    }
    func streamRead(_ connection: ByteStream, _ bytes: ByteBuffer) {}
    func streamWritabilityChanged(_ connection: ByteStream) { if connection.isWritable { pump() } }
    func streamClosed(_ connection: ByteStream, error: SocketError?) {}
}

final class Sink: ByteStreamDelegate {
    let expected: Int
    var received = 0
    var checksum: UInt64 = 0
    var onDone: (Int, UInt64) -> Void
    weak var connection: TCPConnection?
    init(expected: Int, onDone: @escaping (Int, UInt64) -> Void) {
        self.expected = expected
        self.onDone = onDone
    }
    func streamRead(_ connection: ByteStream, _ bytes: ByteBuffer) {
        bytes.withUnsafeReadableBytes { p in
            for b in p { checksum = checksum &* 1_000_003 &+ UInt64(b) }
        }
        received += bytes.readableBytes
        if received == expected {
            onDone(received, checksum)
            connection.close()
        }
    }
    func streamClosed(_ connection: ByteStream, error: SocketError?) {}
}

/// Which thread SIGPIPE hit, for `aWriteToAClosedSocketRaisesNoSIGPIPE` (a C signal handler
/// captures nothing, so the state is global; it is set before and read after the write).
nonisolated(unsafe) var sigpipeWatchedThread = pthread_t()
nonisolated(unsafe) var sigpipeHits = 0

@Suite struct SocketLoopSignalTests {
    /// A write after the socket's send side is shut fails with EPIPE, and by default the kernel
    /// also raises SIGPIPE, which ends a process that has not ignored it (the gateway may open
    /// no NIO socket, and NIO is what ignores it). A handler counts the signals that reach the
    /// loop's own thread; other tests' threads do not count.
    @Test func aWriteToAClosedSocketRaisesNoSIGPIPE() async throws {
        let loop = try SocketLoop(name: "t")
        defer { loop.stop() }
        let echo = try await loop.submit { try EchoServer(on: loop) }.get()
        let previous = signal(SIGPIPE) { _ in
            if pthread_equal(pthread_self(), sigpipeWatchedThread) != 0 { sigpipeHits += 1 }
        }
        defer { signal(SIGPIPE, previous) }
        let closed = try await loop.flatSubmit { () -> EventLoopFuture<String> in
            sigpipeWatchedThread = pthread_self()
            let promise = loop.makePromise(of: String.self)
            TCPConnection.connect(to: echo.address, on: loop, timeout: .seconds(1)) { result in
                let connection = try! result.get()
                try! connection.start(delegate: CloseWatcher { promise.succeed($0.map { "\($0)" } ?? "orderly") })
                shutdown(connection.fd, Int32(SHUT_WR))
                connection.writeAndFlush(ByteBuffer(string: "after shutdown"))
            }
            return promise.futureResult
        }.get()
        #expect(closed.contains("errno \(EPIPE)"))
        #expect(sigpipeHits == 0)
    }
}
