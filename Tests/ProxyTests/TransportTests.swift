import NIOCore
import SocketLoop
import Testing

@testable import Proxy

/// The simulation's transport: a loop whose clock moves only when told, and in-memory pipes
/// that deliver as sockets do (on the loop's next turn, held while reads are paused, the
/// close heard once).
@Suite struct TransportTests {
    final class Recorder: ByteStreamDelegate {
        var bytes = ""
        var completes = 0
        var closed = 0
        func streamRead(_ stream: ByteStream, _ bytes: ByteBuffer) { self.bytes += String(buffer: bytes) }
        func streamReadComplete(_ stream: ByteStream) { completes += 1 }
        func streamClosed(_ stream: ByteStream, error: SocketError?) { closed += 1 }
    }

    final class Fired {
        var names: [String] = []
    }

    @Test func theManualClockFiresTimersInOrderAndOnlyWhenAdvanced() {
        let loop = ManualLoop()
        let start = loop.now
        let fired = Fired()
        let isolated = loop.assumeIsolatedUnsafeUnchecked()
        _ = isolated.scheduleTask(in: .seconds(2)) { fired.names.append("b") }
        _ = isolated.scheduleTask(in: .seconds(1)) { fired.names.append("a") }
        let cancelled = isolated.scheduleTask(in: .seconds(1)) { fired.names.append("cancelled") }
        cancelled.cancel()
        loop.run()
        #expect(fired.names.isEmpty, "nothing is due until the clock moves")
        loop.advance(by: .milliseconds(1500))
        #expect(fired.names == ["a"])
        #expect(loop.now == start + .milliseconds(1500))
        loop.advance(by: .seconds(1))
        #expect(fired.names == ["a", "b"])
    }

    @Test func pipesDeliverOnTheNextTurnAndHoldWhilePaused() throws {
        let loop = ManualLoop()
        let (client, server) = MemoryPipe.pair(loop: loop, clientAddress: try SocketAddress(ipAddress: "10.0.0.1", port: 5000), serverAddress: nil)
        let recorder = Recorder()
        server.delegate = recorder
        #expect(server.remoteAddress?.ipAddress == "10.0.0.1")
        client.write(ByteBuffer(string: "GET / "))
        #expect(recorder.bytes.isEmpty, "nothing before a flush")
        client.flush()
        #expect(recorder.bytes.isEmpty, "nothing before the loop turns")
        loop.run()
        #expect(recorder.bytes == "GET / " && recorder.completes == 1)
        server.pauseReads()
        client.write(ByteBuffer(string: "HTTP/1.1\r\n"))
        client.flush()
        loop.run()
        #expect(recorder.bytes == "GET / ", "held while paused")
        server.resumeReads()
        #expect(recorder.bytes == "GET / HTTP/1.1\r\n")
        // The server answers; the client's side keeps what it received.
        server.write(ByteBuffer(string: "HTTP/1.1 200 OK\r\n\r\n"))
        server.closeAfterFlush()
        loop.run()
        #expect(String(buffer: client.takeReceived()) == "HTTP/1.1 200 OK\r\n\r\n")
        #expect(client.peerClosed && !client.isOpen)
        #expect(recorder.closed == 1)
        client.close()
        loop.run()
        #expect(recorder.closed == 1, "the close is heard once")
    }
}
