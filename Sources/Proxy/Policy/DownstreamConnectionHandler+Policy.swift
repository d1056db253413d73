import NIOCore
import Scripting

/// The HTTP side of a route's policy: what the connection does with each phase's outcome
/// (forward, answer, fail), and the request and response bodies a script reads. The Lua side
/// (states, phases, edits, waits) is the exchange's `PolicySession`.
extension DownstreamConnectionHandler: PolicyStream {
    func startPolicy(_ route: CompiledRoute) {
        accessEnded(exchange.policy.access(route))
    }

    /// The access phase is over (or waits): forward the request, answer it, or fail it.
    func accessEnded(_ outcome: PolicyOutcome) {
        switch outcome {
        case .proceed:
            guard lifecycle.awaitingPolicy, let head = exchange.policy.requestHead, let route = exchange.route else { return }
            forward(head, route: route)
        case .respond(let early):
            writeLocalResponse(early.status, headers: early.headers, json: early.json, body: early.body, close: false)
        case .waiting:
            break
        case .failed(let error):
            respondError(error)
        }
    }

    func accessResumed(_ outcome: PolicyOutcome) {
        accessEnded(outcome)
    }

    var awaitingPolicy: Bool { lifecycle.awaitingPolicy }

    // MARK: the listener's router

    enum RouterOutcome {
        case route(CompiledRoute)
        /// The router returned nil: the routes' `match` decide.
        case fallback
        /// The request has its answer (the router answered, failed, or no state was free).
        case answered
    }

    /// Runs the listener's router on the request.
    func runRouter(_ head: ByteBuffer, router: Int) -> RouterOutcome {
        exchange.policy.requestHead = keep(head, in: &exchange.requestHeadStorage)
        switch exchange.policy.route(head, router: router) {
        case .route(let route): return .route(route)
        case .fallback: return .fallback
        case .respond(let early):
            writeLocalResponse(early.status, headers: early.headers, json: early.json, body: early.body, close: false)
        case .failed(let error):
            respondError(error)
        }
        return .answered
    }

    // MARK: the request body

    /// Collects the whole request body, up to `max` bytes. Nothing is consumed unless all
    /// of it is there, so a body found too large still goes upstream as it came.
    func collectRequestBody(max: Int) -> BodyCollect {
        if let body = exchange.policy.edits.body { return body.readableBytes <= max ? .done(body) : .tooLarge }
        switch exchange.requestBody {
        case .none, .untilClose:
            return .done(allocator.buffer(capacity: 0))
        case .length(let remaining):
            if remaining > max { return .tooLarge }
            guard var buffer = inbound, buffer.readableBytes >= remaining else { return .pending }
            let body = buffer.readSlice(length: remaining)!
            inbound = buffer.readableBytes > 0 ? buffer : nil
            bodyCollected(body)
            return .done(body)
        case .chunked(var decoder):
            guard var buffer = inbound else { return .pending }
            let collected = decoder.collect(&buffer, max: max)
            if case .done(let body) = collected {
                inbound = buffer.readableBytes > 0 ? buffer : nil
                bodyCollected(body)
            }
            return collected
        }
    }

    private func bodyCollected(_ body: ByteBuffer) {
        exchange.policy.edits.body = body
        exchange.requestBody = .none
        lifecycle.requestBodyFinished()
        // The upstream gets the body with the head: there is no `100 Continue` to wait for.
        Self.expectName.withUnsafeBytes { exchange.policy.edits.headers.set($0, nil) }
    }

    static let expectName: [UInt8] = Array("Expect".utf8)

    func requestBodyWanted() {
        // A client that sent `Expect: 100-continue` holds its body until told to go on.
        if lifecycle.bodyWanted() {
            var interim = allocator.buffer(capacity: 32)
            interim.writeStaticString("HTTP/1.1 100 Continue\r\n\r\n")
            io.write(interim)
            io.flush()
        }
        updateReads()
    }

    /// More client bytes came while a script waits for the body.
    func continueBodyWait() {
        guard let outcome = exchange.policy.requestBodyArrived() else { return }
        accessEnded(outcome)
    }

    // MARK: the response phase

    /// Runs the response phase on the upstream's head; false if the client has had its
    /// answer instead (the script failed).
    func runResponsePhase(_ route: CompiledRoute) -> Bool {
        switch exchange.policy.response(route) {
        case .proceed, .waiting, .respond:
            // An answer a module gives in the response phase has no upstream answer to
            // replace any more: the upstream's goes on.
            return true
        case .failed(let error):
            exchange.upstreamReusable = false
            respondError(error)
            return false
        }
    }
}
