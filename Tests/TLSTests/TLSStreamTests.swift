import Foundation
import NIOCore
import SocketLoop
import TLS
import Testing

/// A TLS echo server on a `SocketLoop` listener, each accepted socket wrapped in a
/// ``TLSStream``, against Python's `ssl` module as the client: the handshake picks the
/// certificate by name, data goes both ways intact, and bad clients are closed with a reason.
@Suite struct TLSStreamTests {
    /// Echoes what it reads; remembers how the stream closed.
    final class Echo: ByteStreamDelegate, @unchecked Sendable {
        var closedWith: [SocketError?] = []
        func streamRead(_ stream: any ByteStream, _ bytes: ByteBuffer) { stream.write(bytes, promise: nil) }
        func streamReadComplete(_ stream: any ByteStream) { stream.flush() }
        func streamClosed(_ stream: any ByteStream, error: SocketError?) { closedWith.append(error) }
    }

    final class Server: @unchecked Sendable {
        let loop: SocketLoop
        var listener: TCPListener!
        var streams: [TLSStream] = []
        let echo = Echo()

        init(_ certificates: TLSCertificates) throws {
            loop = try SocketLoop(name: "tls")
            try loop.submit {
                self.listener = try TCPListener(address: try SocketAddress(ipAddress: "127.0.0.1", port: 0), on: self.loop) { connection in
                    guard let stream = try? TLSStream(serving: connection, certificates: certificates) else { return connection.close() }
                    stream.delegate = self.echo
                    self.streams.append(stream)
                    try? connection.start(delegate: stream)
                }
            }.wait()
        }

        var port: Int { listener.localAddress.port ?? 0 }
        func stop() {
            try? loop.submit { self.listener.close() }.wait()
            loop.stop()
        }
        func closes() throws -> [SocketError?] { try loop.submit { self.echo.closedWith }.wait() }
    }

    /// Runs Python with `script`; its standard output.
    static func python(_ script: String, _ arguments: [String]) throws -> String {
        let process = Process()
        process.executableURL = URL(fileURLWithPath: "/usr/bin/python3")
        process.arguments = ["-c", script] + arguments
        let out = Pipe()
        process.standardOutput = out
        process.standardError = FileHandle.nullDevice
        try process.run()
        let data = out.fileHandleForReading.readDataToEndOfFile()
        process.waitUntilExit()
        return String(decoding: data, as: UTF8.self)
    }

    static let client = """
        import socket, ssl, sys
        port, name, roots, size, maxv = int(sys.argv[1]), sys.argv[2], sys.argv[3], int(sys.argv[4]), sys.argv[5]
        ctx = ssl.create_default_context(cafile=roots)
        if maxv == "1.1":
            ctx.minimum_version = ssl.TLSVersion.TLSv1
            ctx.maximum_version = ssl.TLSVersion.TLSv1_1
            ctx.set_ciphers("ALL:@SECLEVEL=0")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=10) as raw:
                with ctx.wrap_socket(raw, server_hostname=name) as s:
                    payload = bytes(i % 251 for i in range(size))
                    s.sendall(payload)
                    got = b""
                    while len(got) < size:
                        chunk = s.recv(65536)
                        if not chunk: break
                        got += chunk
                    cn = dict(x[0] for x in s.getpeercert()["subject"])["commonName"]
                    print(s.version(), cn, "intact" if got == payload else "corrupt %d" % len(got))
        except Exception as e:
            print("failed", type(e).__name__)
        """

    @Test func aPythonClientGetsTheNamedCertificateAndItsBytesBack() throws {
        let folder = try TLSCertificateTests.Folder()
        let certificates = try TLSCertificates([
            try folder.certificate("api", subject: "api.example.com", altNames: ["api.example.com"]),
            try folder.certificate("wildcard", subject: "wildcard.example.com", altNames: ["*.example.com"]),
        ])
        let roots = try folder.roots(["api", "wildcard"])
        let server = try Server(certificates)
        defer { server.stop() }
        let port = String(server.port)
        #expect(try Self.python(Self.client, [port, "api.example.com", roots, "5", "-"]) == "TLSv1.3 api.example.com intact\n")
        #expect(try Self.python(Self.client, [port, "www.example.com", roots, "5", "-"]) == "TLSv1.3 wildcard.example.com intact\n")
        // Many records each way: 4 MB echoed through the memory BIOs.
        #expect(try Self.python(Self.client, [port, "api.example.com", roots, String(4 << 20), "-"]) == "TLSv1.3 api.example.com intact\n")
        // TLS 1.1 is refused.
        #expect(try Self.python(Self.client, [port, "api.example.com", roots, "5", "1.1"]).hasPrefix("failed"))
    }

    @Test func aClientThatSpeaksNoTLSIsClosedWithTheReason() throws {
        let folder = try TLSCertificateTests.Folder()
        let certificates = try TLSCertificates([try folder.certificate("api", subject: "api.example.com", altNames: ["api.example.com"])])
        let server = try Server(certificates)
        defer { server.stop() }
        let script = """
            import socket, sys
            with socket.create_connection(("127.0.0.1", int(sys.argv[1])), timeout=10) as s:
                s.sendall(b"GET / HTTP/1.1\\r\\nHost: a\\r\\n\\r\\n")
                print("closed" if s.recv(100) is not None else "open")
            """
        #expect(try Self.python(script, [String(server.port)]).hasPrefix("closed"))
        var closes: [SocketError?] = []
        for _ in 0..<100 where closes.isEmpty {
            closes = try server.closes()
            Thread.sleep(forTimeInterval: 0.01)
        }
        guard case .tls(let reason)?? = closes.first else {
            Issue.record("closed with \(closes)")
            return
        }
        #expect(reason.hasPrefix("handshake failed"), "\(reason)")
    }
}
