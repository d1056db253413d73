import CLuaRuntime
import NIOCore
import Scripting

/// `response.body` and `response.set_body`: the response phase waits for the whole upstream
/// body (bounded), then the client gets the body as the script leaves it, with a
/// Content-Length. Nothing is consumed until the whole body is in, so a body found too
/// large still streams to the client as it came.
extension DownstreamConnectionHandler {
    func collectResponseBody(max: Int) -> BodyCollect {
        if let body = exchange.policy.responseEdits.body { return body.readableBytes <= max ? .done(body) : .tooLarge }
        let raw = exchange.policy.responseRest ?? ByteBuffer()
        switch exchange.responseBody {
        case .none:
            return .done(allocator.buffer(capacity: 0))
        case .length(let remaining):
            if remaining > max { return .tooLarge }
            guard raw.readableBytes >= remaining else { return .pending }
            var rest = raw
            let body = rest.readSlice(length: remaining)!
            exchange.policy.responseRest = rest
            exchange.responseBody = .length(remaining: 0)
            return .done(body)
        case .untilClose:
            if raw.readableBytes > max { return .tooLarge }
            guard exchange.policy.upstreamEnded else { return .pending }
            exchange.policy.responseRest = ByteBuffer()
            return .done(raw)
        case .chunked(var decoder):
            var rest = raw
            let collected = decoder.collect(&rest, max: max)
            switch collected {
            case .done:
                exchange.policy.responseRest = rest
                exchange.responseBody = .chunked(decoder)
            case .pending:
                // Framing is at most a few bytes per chunk, unless the upstream is hostile.
                if raw.readableBytes > BodyWait(max: max).bufferLimit { return .tooLarge }
            case .tooLarge, .malformed:
                break
            }
            return collected
        }
    }

    func responseBodyWanted() {
        lifecycle.responseCollecting()
    }

    /// More upstream bytes (or its close) while a response phase waits for the body.
    func continueResponseWait() {
        guard let head = exchange.policy.responseHead, let outcome = exchange.policy.responseBodyArrived() else { return }
        switch outcome {
        case .proceed, .waiting, .respond:
            break
        case .failed(let error):
            exchange.upstreamReusable = false
            if error.source == .upstream {
                upstreamFailed(error)
            } else {
                respondError(error)
            }
            return
        }
        var rest = exchange.policy.responseRest ?? ByteBuffer()
        exchange.policy.responseRest = nil
        lifecycle.responseCollected()
        guard sendResponseHead(head, framing: exchange.responseBody, &rest) else { return }
        // What stayed in `rest` (a body found too large) streams on as usual.
        upstreamRead(rest)
    }
}
