import Foundation

/// An HTTPS origin in a Python child process (the standard library's `ssl` and `http.server`,
/// HTTP/1.1 kept alive): each answer says, as JSON, the path, the name the client asked for
/// (SNI), whether its TLS session was resumed, the connection's number, and the client
/// certificate's subject when `clientCA` asks for one. `/close` answers with
/// `Connection: close`.
final class TLSOrigin: @unchecked Sendable {
    let port: Int
    private let process: Process

    static let script = """
        import http.server, json, socket, ssl, sys, threading
        port, cert, key, client_ca = int(sys.argv[1]), sys.argv[2], sys.argv[3], sys.argv[4]
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.load_cert_chain(cert, key)
        if client_ca != "-":
            ctx.load_verify_locations(client_ca)
            ctx.verify_mode = ssl.CERT_REQUIRED
        names = {}
        def sni(sock, name, context):
            names[id(sock)] = name
        ctx.sni_callback = sni
        count = [0]
        lock = threading.Lock()
        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"
            def setup(self):
                super().setup()
                with lock:
                    count[0] += 1
                    self.number = count[0]
            def do_GET(self):
                peer = self.connection.getpeercert()
                subject = dict(x[0] for x in peer["subject"])["commonName"] if peer else None
                body = json.dumps({"path": self.path, "sni": names.get(id(self.connection)), "reused": self.connection.session_reused,
                                   "connection": self.number, "version": self.connection.version(), "client": subject}).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                if self.path == "/close":
                    self.send_header("Connection", "close")
                    self.close_connection = True
                self.end_headers()
                self.wfile.write(body)
            def log_message(self, *args):
                pass
        class Server(http.server.ThreadingHTTPServer):
            daemon_threads = True
            def get_request(self):
                sock, address = self.socket.accept()
                try:
                    return ctx.wrap_socket(sock, server_side=True), address
                except Exception:
                    sock.close()
                    raise
            def handle_error(self, request, address):
                pass
        server = Server(("127.0.0.1", port), Handler)
        print("ready", flush=True)
        server.serve_forever()
        """

    init(cert: String, key: String, clientCA: String? = nil) throws {
        port = try RawClient.freePort()
        process = try launchServer("/usr/bin/python3", ["-c", Self.script, "\(port)", cert, key, clientCA ?? "-"], port: port, name: "the Python TLS origin")
    }

    deinit {
        kill(process.processIdentifier, SIGKILL)
        process.waitUntilExit()
    }
}
