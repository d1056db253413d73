import NIOCore
import SocketLoop
import TLS
import Config

extension DownstreamConnectionHandler {
    /// Answers the request with the error's status and `{"error": ..., "request_id": ...}`
    /// (closing the connection after it when the error says so). If part of a response was
    /// already sent, the only honest move left is to cut the connection.
    func respondError(_ error: ProxyError) {
        guard !exchange.isVacant else {
            // No request to answer (a late event after the request ended): nothing to say.
            assertionFailure("respondError(\(error.message)) with no request in progress")
            return
        }
        finishTry()
        if let upstream = exchange.attempt.upstream {
            self.exchange.attempt.upstream = nil
            upstream.close()
        }
        guard lifecycle.errorAction() == .answer else {
            forceClose()
            return
        }
        if exchange.request.headers.grpc {
            writeLocalResponse(error.status, headers: nil, json: false, body: ByteBuffer(string: error.message), close: error.closesConnection)
        } else {
            writeLocalResponse(error.status, headers: nil, json: true, body: errorBody(error.message), close: error.closesConnection)
        }
    }

    /// `{"error": message, "request_id": ...}`.
    func errorBody(_ message: String) -> ByteBuffer {
        exchange.errorBody(message, ids: &worker.requestIDs)
    }

    /// Answers the request from the gateway itself (an error, or a script's early answer).
    /// `close` forces the connection closed (a broken request); otherwise it stays open if
    /// what is left of the request body has arrived and can be dropped.
    func writeLocalResponse(_ status: Int, headers: HeaderEdits?, json: Bool, body: ByteBuffer, close: Bool) {
        if exchange.requestID.readableBytes == 0 { worker.requestIDs.next(into: &exchange.requestID) }
        exchange.attempt.upstreamHead = nil
        exchange.sentStatus = status
        let next = lifecycle.answering(mustClose: close, bodyDropped: dropBufferedBody())
        let closing = next == .closeAfterFlush
        // A gRPC call hears of an error as a gRPC status, its message the body's text (the
        // access log keeps the HTTP status the gateway decided).
        let grpcError = status >= 400 && exchange.request.headers.grpc
        var head = ByteBuffer()
        head.writeHead(estimate: 192 + exchange.requestID.readableBytes + (headers?.bytes ?? 0)) { w in
            if grpcError {
                w.put("HTTP/1.1 200 OK\r\nContent-Type: application/grpc\r\ngrpc-status: ")
                w.decimal(GRPCStatus.code(forHTTP: status))
                w.put("\r\ngrpc-message: ")
                w.put(string: GRPCStatus.encodeMessage(body.readableBytesView))
                w.put("\r\nContent-Length: 0\r\n")
                headers?.write(into: &w)
            } else {
                w.put("HTTP/1.1 ")
                w.decimal(status)
                w.put(byte: HTTPBytes.sp)
                w.put(string: Self.reason(status))
                w.put("\r\n")
                if json { w.put("Content-Type: application/json\r\n") }
                headers?.write(into: &w)
            }
            if !grpcError, status != 204, status != 304 {
                w.put("Content-Length: ")
                w.decimal(body.readableBytes)
                w.put("\r\n")
            }
            if headers?.contains("x-request-id") != true {
                w.put("X-Request-Id: ")
                w.put(exchange.requestID)
                w.put("\r\n")
            }
            w.put(closing ? "Connection: close\r\n\r\n" : "\r\n")
        }
        sendToClient(head)
        if !grpcError, !exchange.request.isHEAD, status != 204, status != 304, body.readableBytes > 0 {
            sendToClient(body)
        }
        if closing { inbound = nil }
        finishExchange(next)
    }

    /// Drops an unread request body that has fully arrived, so that an early answer need
    /// not close the connection; false if some of it is still to come.
    func dropBufferedBody() -> Bool {
        if lifecycle.requestBodyDone { return true }
        switch exchange.requestBody {
        case .none, .untilClose:
            return true
        case .length(let remaining):
            if remaining == 0 { return true }
            guard var buffer = inbound, buffer.readableBytes >= remaining else { return false }
            buffer.moveReaderIndex(forwardBy: remaining)
            inbound = buffer.readableBytes > 0 ? buffer : nil
        case .chunked(var decoder):
            // `inbound` is bounded (reads pause past `maxBufferedInbound`), so this is too.
            guard var buffer = inbound, case .done = decoder.collect(&buffer, max: .max) else { return false }
            inbound = buffer.readableBytes > 0 ? buffer : nil
        }
        exchange.requestBody = .none
        return true
    }


    static func reason(_ status: Int) -> String {
        switch status {
        case 200: return "OK"
        case 201: return "Created"
        case 202: return "Accepted"
        case 204: return "No Content"
        case 301: return "Moved Permanently"
        case 302: return "Found"
        case 303: return "See Other"
        case 304: return "Not Modified"
        case 307: return "Temporary Redirect"
        case 308: return "Permanent Redirect"
        case 400: return "Bad Request"
        case 401: return "Unauthorized"
        case 403: return "Forbidden"
        case 404: return "Not Found"
        case 405: return "Method Not Allowed"
        case 408: return "Request Timeout"
        case 409: return "Conflict"
        case 413: return "Content Too Large"
        case 414: return "URI Too Long"
        case 429: return "Too Many Requests"
        case 431: return "Request Header Fields Too Large"
        case 500: return "Internal Server Error"
        case 501: return "Not Implemented"
        case 502: return "Bad Gateway"
        case 503: return "Service Unavailable"
        case 504: return "Gateway Timeout"
        case 505: return "HTTP Version Not Supported"
        default: return status < 400 ? "OK" : "Error"
        }
    }
}

extension ProxyWorker {
    /// Serves the server end of an in-memory pipe (the simulation's client connection).
    @discardableResult
    func accept(_ end: MemoryPipe.End, listener: ListenerHandle) -> DownstreamConnectionHandler {
        let handler = DownstreamConnectionHandler(worker: self, listener: listener)
        end.delegate = handler
        handler.attach(.memory(end))
        return handler
    }

    /// Serves a newly accepted socket on this worker's `SocketLoop`, with no pipeline between
    /// the handler and the socket.
    public func accept(_ connection: TCPConnection, listener: ListenerHandle) throws(SocketError) {
        eventLoop.assertInEventLoop()
        let handler = DownstreamConnectionHandler(worker: self, listener: listener)
        handler.mayBecomeH2 = generation.shared.http2Listeners.contains(listener.name)
        var stream: TLSStream?
        if let certificates = generation.shared.tls[listener.name], let settings = generation.shared.tlsSettings[listener.name] {
            guard handshakesInProgress < settings.maxHandshakes else {
                connection.close()
                return
            }
            // TLS: the handler reads and writes plaintext through the stream; the socket's events go to it.
            let tls = try TLSStream(serving: connection, certificates: certificates)
            tls.delegate = handler
            handshakesInProgress += 1
            tls.onHandshakeEnded = { [unowned self] in self.handshakesInProgress -= 1 }
            tls.armHandshakeTimeout(TimeAmount(settings.handshakeTimeout), on: connection.loop)
            handler.attach(.tls(tls))
            stream = tls
        } else {
            handler.attach(.socket(connection))
        }
        do {
            try connection.start(delegate: stream ?? handler)
        } catch {
            // The socket never started: the stream (its handshake count, its timer) and the
            // handler hear of it here.
            if let stream { stream.streamClosed(connection, error: error) } else { handler.closed() }
            throw error
        }
    }
}
