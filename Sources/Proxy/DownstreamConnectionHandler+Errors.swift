import NIOCore

extension DownstreamConnectionHandler {
    /// Answers the request with `status` and `{"error": ..., "request_id": ...}`. If part of a
    /// response was already sent, the only honest move left is to cut the connection.
    func respondError(_ status: Int, _ message: String, close: Bool) {
        if let upstream {
            self.upstream = nil
            upstream.close()
        }
        guard !responseStarted, state != .closed, state != .closing else {
            forceClose()
            return
        }
        if requestID.readableBytes == 0 { worker.requestIDs.next(into: &requestID) }
        responseStarted = true
        responsePhase = .done
        upstreamHead = nil
        let closing = close || !keepAliveClient || closeAfterResponse
        var body = allocator.buffer(capacity: 64 + message.utf8.count + requestID.readableBytes)
        body.writeStaticString("{\"error\":\"")
        body.writeString(message)  // messages are ours: no quotes or backslashes to escape
        body.writeStaticString("\",\"request_id\":\"")
        body.writeImmutableBuffer(requestID)
        body.writeStaticString("\"}\n")

        var head = allocator.buffer(capacity: 192)
        head.writeStaticString("HTTP/1.1 ")
        head.writeString(String(status))
        head.writeStaticString(" ")
        head.writeString(Self.reason(status))
        head.writeStaticString("\r\nContent-Type: application/json\r\nContent-Length: ")
        head.writeString(String(body.readableBytes))
        head.writeStaticString("\r\nX-Request-Id: ")
        head.writeImmutableBuffer(requestID)
        head.writeStaticString(closing ? "\r\nConnection: close\r\n\r\n" : "\r\n\r\n")
        context.write(wrapOutboundOut(head), promise: nil)
        context.write(wrapOutboundOut(body), promise: nil)
        if closing {
            inbound = nil
            closeAfterFlush()
        } else {
            context.flush()
            requestBodyDone = true
            finishExchange()
        }
    }

    static func reason(_ status: Int) -> String {
        switch status {
        case 400: return "Bad Request"
        case 404: return "Not Found"
        case 408: return "Request Timeout"
        case 413: return "Content Too Large"
        case 414: return "URI Too Long"
        case 431: return "Request Header Fields Too Large"
        case 500: return "Internal Server Error"
        case 501: return "Not Implemented"
        case 502: return "Bad Gateway"
        case 503: return "Service Unavailable"
        case 504: return "Gateway Timeout"
        case 505: return "HTTP Version Not Supported"
        default: return "Error"
        }
    }
}

extension ProxyWorker {
    /// Serves a newly accepted client connection on this worker.
    public func accept(_ channel: Channel, listener: ListenerHandle) throws {
        eventLoop.assertInEventLoop()
        try channel.pipeline.syncOperations.addHandler(DownstreamConnectionHandler(worker: self, listener: listener))
    }
}
