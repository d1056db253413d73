import NIOCore

/// The life of one client connection and of the request in progress on it, as a value (NIO's
/// `HTTPServerPipelineHandler` and Hummingbird's connection manager are the models). The
/// handler reports events (bytes came, a head parsed, a try started, the upstream closed, the
/// timer fired, the client left) and carries out the action each returns; the machine holds
/// no socket, buffer or clock (time is passed in), so every move is tested without a socket
/// (`ConnectionStateMachineTests`). Switches are exhaustive, and moves that cannot happen assert.
///
/// The request's data sits beside the state rather than in an enum payload: it is valid from
/// `head` (its start) to the end of `request`. Every event on the hot path then changes a field
/// in place; as a payload, each cost 30-45 instructions of copying out and back (callgrind,
/// about 2% of a proxied request).
///
/// What it decides: whether bytes are a head to read, body to forward or held; when a request
/// ends and whether the connection then serves the next one or closes; what a timeout, an
/// upstream that closed or an error means at each point; whether reads pause. What it leaves to
/// the handler: the bytes themselves, the route, the policy session and the tries' targets.
struct ConnectionStateMachine {
    enum State: Equatable {
        /// Between requests.
        case idle
        /// Part of a head has arrived (`request.started` says when).
        case head
        /// A request is in progress (`request` says where it stands).
        case request
        /// A protocol switch (`101`) made the connection a tunnel: the handler no longer reads
        /// or writes it, and waits for the tunnel's end.
        case tunnel
        /// The last answer is written; the connection closes once it is out.
        case closing
        case closed
    }

    /// The request in progress: where it stands, each way.
    struct Request {
        enum Stage {
            /// The head is parsed; the route (or the listener's router) is being chosen.
            case routing
            /// The route's policy runs its access phase (or waits for a state, a body, a call).
            case policy
            /// Waiting for an upstream connection.
            case connecting
            /// Connected: the request body goes up, the response comes down.
            case proxying
            /// The gateway answered itself; nothing more comes from an upstream.
            case answered
        }

        enum Response {
            /// No response head yet.
            case head
            /// The head is in, and a response phase waits for the whole body (`response.body`).
            case collecting
            case body
            case done
        }

        var stage = Stage.routing
        /// When the request's first byte came (its deadline runs from there).
        var started: NIODeadline
        var bodyDone = true
        var response = Response.head
        /// The client has had bytes of the response: no retry, and an error can only cut it.
        var responseStarted = false
        /// The request may be sent again as it is (RFC 9110 9.2.2).
        var idempotent = false
        /// The client asked to be told to send its body (`Expect: 100-continue`, HTTP/1.1).
        var expectContinue = false
        var continueSent = false
        /// The try was sent again once on a new connection after a pooled one turned out closed.
        var retriedStale = false
    }

    private(set) var state = State.idle
    /// The request in progress (or whose head is arriving); stale otherwise.
    private(set) var request = Request(started: .uptimeNanoseconds(0))
    /// The client keeps the connection after the current request (its head said so, and the
    /// gateway is not draining).
    private(set) var keepAlive = true
    /// The connection ends after the current response whatever the client said (an unread
    /// body, an HTTP/1.0 client reading to the close).
    private(set) var closeAfterResponse = false

    // MARK: client bytes

    /// What to do with bytes the client sent.
    enum ReadAction {
        /// Look for a head in them (with what came before).
        case parseHead
        /// Hold them: the request in progress is not ready for them.
        case hold
        /// A script waits for the request body: hold them and tell the policy.
        case holdForPolicy
        /// Forward them upstream as request body (unless earlier bytes are still held).
        case forwardBody
        /// The connection is ending: drop them.
        case drop
    }

    func clientBytes() -> ReadAction {
        switch state {
        case .idle, .head:
            return .parseHead
        case .request:
            switch request.stage {
            case .routing, .connecting, .answered: return .hold
            case .policy: return .holdForPolicy
            case .proxying: return request.bodyDone ? .hold : .forwardBody
            }
        case .tunnel, .closing, .closed:
            return .drop
        }
    }

    /// Bytes of a head are in (read now, or held since the last request): true if they start
    /// one, whose deadline then runs from `now`.
    mutating func headBytes(now: NIODeadline) -> Bool {
        guard state == .idle else { return false }
        state = .head
        request.started = now
        return true
    }

    /// When the request in progress (or its head) began.
    var requestStarted: NIODeadline? {
        switch state {
        case .head, .request, .tunnel: return request.started
        case .idle, .closing, .closed: return nil
        }
    }

    /// The head parsed (or failed to): a request is in progress from here.
    mutating func headParsed(keepAlive: Bool, bodyDone: Bool, idempotent: Bool, expectContinue: Bool, draining: Bool) {
        guard state == .head else {
            assertionFailure("a head parsed in \(state)")
            return
        }
        self.keepAlive = keepAlive && !draining
        closeAfterResponse = false
        request = Request(started: request.started, bodyDone: bodyDone, idempotent: idempotent, expectContinue: expectContinue)
        state = .request
    }

    /// A head that cannot be read (too large, timed out) is answered as a request of its own.
    mutating func headRefused() {
        guard state == .head else {
            assertionFailure("a head refused in \(state)")
            return
        }
        keepAlive = false
        request = Request(started: request.started)
        state = .request
    }

    // MARK: the request's stages

    mutating func policyStarted() { setStage(.policy) }

    /// A try starts (or a stale pooled connection's request is sent again): waiting for a connection.
    mutating func tryStarted() { setStage(.connecting) }

    mutating func connected() { setStage(.proxying) }

    /// Whether the access phase is what the request waits for.
    var awaitingPolicy: Bool {
        state == .request && request.stage == .policy
    }

    /// Whether the request waits for an upstream connection (a late one is not used otherwise).
    var awaitingConnection: Bool {
        state == .request && request.stage == .connecting
    }

    /// A script wants the request body: whether to send `100 Continue` first (once, and only
    /// to a client that asked and has not sent the body).
    mutating func bodyWanted() -> Bool {
        guard state == .request, request.expectContinue, !request.continueSent, !request.bodyDone else { return false }
        request.continueSent = true
        return true
    }

    mutating func requestBodyFinished() { update { $0.bodyDone = true } }

    var requestBodyDone: Bool {
        state == .request ? request.bodyDone : true
    }

    // MARK: the response

    var response: Request.Response {
        state == .request ? request.response : .head
    }

    var responseStarted: Bool {
        (state == .request || state == .tunnel) && request.responseStarted
    }

    /// An HTTP/1.0 client reads the body to the close.
    mutating func closeAfterThisResponse() { closeAfterResponse = true }

    mutating func responseCollecting() { update { $0.response = .collecting } }

    mutating func responseCollected() { update { $0.response = .head } }

    mutating func responseHeadSent() {
        update {
            $0.response = .body
            $0.responseStarted = true
        }
    }

    /// How an exchange ends: the connection serves the client's next request, or closes once
    /// the answer is out.
    enum Next: Equatable {
        case serveNext
        case closeAfterFlush
    }

    /// The last byte of the upstream's response went to the client. `clean`: the upstream
    /// connection may be pooled (the origin read the whole request).
    mutating func responseFinished() -> (next: Next, clean: Bool) {
        guard state == .request else {
            assertionFailure("a response finished in \(state)")
            return (.closeAfterFlush, false)
        }
        request.response = .done
        if request.bodyDone { return (nextAfterResponse, true) }
        // The origin answered before reading the whole body (an early 413, say). What is
        // left of the body cannot be told from a next request: close both sides after this.
        closeAfterResponse = true
        return (.closeAfterFlush, false)
    }

    /// The gateway answers the request itself. `mustClose`: the request cannot be trusted
    /// (its framing, a timeout); `bodyDropped`: what is left of its body has arrived and was
    /// dropped. Whether the connection then serves the next request: before the head is written,
    /// which says `Connection: close` when it will not.
    mutating func answering(mustClose: Bool, bodyDropped: Bool) -> Next {
        guard state == .request else {
            assertionFailure("an answer in \(state)")
            return .closeAfterFlush
        }
        request.stage = .answered
        request.response = .done
        request.responseStarted = true
        if bodyDropped { request.bodyDone = true }
        return mustClose || !bodyDropped ? .closeAfterFlush : nextAfterResponse
    }

    private var nextAfterResponse: Next { keepAlive && !closeAfterResponse ? .serveNext : .closeAfterFlush }

    /// Whether the head the client gets says `Connection: close`.
    var closesAfterResponse: Bool { !keepAlive || closeAfterResponse }

    /// The exchange has ended: the connection waits for the next request, or closes.
    /// `buffered`: client bytes are waiting already (a pipelined request).
    mutating func exchangeEnded(_ next: Next, buffered: Bool) -> ExchangeEndAction {
        switch state {
        case .request:
            switch next {
            case .serveNext:
                state = .idle
                return buffered ? .readNextHead : .waitForNext
            case .closeAfterFlush:
                // Drained first only while the client may still be sending (nginx's heuristic):
                // a body not all read, bytes past the request, or an answer of ours that may
                // have refused it. A finished exchange closes at once, and the connection does
                // not linger (holding a drain or a shutdown) on a client that keeps it open.
                let linger = buffered || !request.bodyDone || request.stage == .answered
                state = .closing
                return .closeAfterFlush(linger: linger)
            }
        case .tunnel, .closing, .closed:
            return .nothing
        case .idle, .head:
            assertionFailure("an exchange ended in \(state)")
            return .nothing
        }
    }

    enum ExchangeEndAction: Equatable {
        case readNextHead
        case waitForNext
        /// `linger`: drain what the client still sends before closing.
        case closeAfterFlush(linger: Bool)
        case nothing
    }

    // MARK: failures

    /// What an error means now: an answer, or (part of a response went out, or the connection
    /// is ending) a cut.
    enum ErrorAction: Equatable {
        case answer
        case cut
    }

    func errorAction() -> ErrorAction {
        switch state {
        case .request: return request.responseStarted ? .cut : .answer
        case .head: return .answer
        case .idle, .tunnel, .closing, .closed: return .cut
        }
    }

    /// Whether a failed try may go to another target as far as the connection is concerned.
    var mayRetry: Bool {
        state == .request && !request.responseStarted
    }

    /// What the upstream closing means.
    enum UpstreamClosedAction: Equatable {
        /// A pooled connection the origin had closed: the same target on a new connection.
        case reconnect
        /// The try failed before any answer: another target, or the error.
        case tryFailed(ProxyError)
        /// The answer cannot be completed: the error (if nothing went out yet).
        case failed(ProxyError)
        /// A close-delimited body ended: the response is complete.
        case responseEnded
        /// A close-delimited body a response phase was collecting ended.
        case collectedToClose
        /// Part of the response went out: cut the client's connection.
        case cut
        case nothing
    }

    /// The upstream connection closed. `reused`: it had carried an earlier request;
    /// `canResend`: the request head is still in hand and no response byte came;
    /// `untilClose`: the response body is delimited by the close.
    mutating func upstreamClosed(reused: Bool, canResend: Bool, untilClose: Bool) -> UpstreamClosedAction {
        guard state == .request else { return .nothing }
        switch request.response {
        case .head:
            // A pooled connection the origin closed as it was reused (its keep-alive timeout):
            // the request again on a new connection, once, if it is idempotent and its body
            // went with it (RFC 9110 9.2.2; nginx does the same and never retries a POST by default).
            if reused, canResend, request.idempotent, request.bodyDone, !request.retriedStale, request.stage == .proxying {
                request.retriedStale = true
                request.stage = .connecting
                return .reconnect
            }
            return .tryFailed(.upstreamClosed)
        case .collecting:
            return untilClose ? .collectedToClose : .failed(.upstreamClosed)
        case .body:
            return untilClose ? .responseEnded : .cut
        case .done:
            return .nothing
        }
    }

    /// The upstream did not answer in time.
    func upstreamTimedOut() -> UpstreamClosedAction {
        switch response {
        case .head: return .tryFailed(.upstreamTimeout)
        case .collecting: return .failed(.upstreamTimeout)
        case .body: return .cut
        case .done: return .nothing
        }
    }

    // MARK: the connection

    /// The client's connection closed. False if it was closed already.
    mutating func clientClosed() -> Bool {
        if state == .closed { return false }
        state = .closed
        return true
    }

    /// Closes at once (an error past the response head, shutdown). False if it was closed already.
    mutating func closeNow() -> Bool {
        if state == .closed { return false }
        state = .closing
        return true
    }

    /// The upstream answered `101`: the connection is a tunnel from here (no more requests).
    mutating func tunnelStarted() {
        guard state == .request else {
            assertionFailure("a tunnel started in \(state)")
            return
        }
        keepAlive = false
        state = .tunnel
    }

    /// The gateway drains: no request after the current one. True if the connection may close now.
    mutating func drain(buffered: Bool) -> Bool {
        keepAlive = false
        guard state == .idle, !buffered else { return false }
        state = .closing
        return true
    }

    var isClosing: Bool {
        switch state {
        case .closing, .closed: return true
        case .idle, .head, .request, .tunnel: return false
        }
    }

    // MARK: time

    /// When the timer should next look: the idle timeout between requests, the request
    /// timeout from a request's first byte.
    /// (The timeouts are read only when they apply: each is a few loads through the generation.)
    func deadline(lastActivity: NIODeadline, idleTimeout: @autoclosure () -> TimeAmount, requestTimeout: @autoclosure () -> TimeAmount) -> NIODeadline {
        switch state {
        case .idle: return lastActivity + idleTimeout()
        case .head, .request: return request.started + requestTimeout()
        case .tunnel, .closing, .closed: return .distantFuture
        }
    }

    enum TimerAction: Equatable {
        /// Not yet: look again at the deadline.
        case rearm
        /// An idle kept-alive connection timed out.
        case close
        /// The request (or its head) took too long: answer with this (cut, if the answer started).
        case answer(ProxyError)
        case nothing
    }

    mutating func timerFired(
        now: NIODeadline, lastActivity: NIODeadline, idleTimeout: @autoclosure () -> TimeAmount, requestTimeout: @autoclosure () -> TimeAmount
    ) -> TimerAction {
        if isClosing { return .nothing }
        if now < deadline(lastActivity: lastActivity, idleTimeout: idleTimeout(), requestTimeout: requestTimeout()) { return .rearm }
        switch state {
        case .idle:
            state = .closing
            return .close
        case .head:
            headRefused()
            return .answer(.clientTimeout)
        case .request:
            return .answer(.requestTimeout)
        case .tunnel, .closing, .closed:
            return .nothing
        }
    }

    // MARK: flow control

    /// Whether client reads pause: a head is read whole; a request in progress may hold
    /// `buffered` bytes up to `limit` (more while a script waits for a body it may hold);
    /// a streamed body goes only as fast as the upstream takes it. (Inputs are read only where
    /// they decide: this runs on every read.)
    func readsPaused(
        buffered: @autoclosure () -> Int, limit: Int, bodyWaitLimit: @autoclosure () -> Int?, upstreamWritable: @autoclosure () -> Bool
    ) -> Bool {
        switch state {
        case .idle, .head: return false
        case .tunnel, .closing, .closed: return true
        case .request:
            switch request.stage {
            case .routing, .connecting, .answered: return buffered() > limit
            case .policy: return buffered() > max(limit, bodyWaitLimit() ?? 0)
            case .proxying: return request.bodyDone ? buffered() > limit : !upstreamWritable()
            }
        }
    }

    // MARK: helpers

    private mutating func setStage(_ stage: Request.Stage) {
        update { $0.stage = stage }
    }

    private mutating func update(_ change: (inout Request) -> Void) {
        guard state == .request else {
            assertionFailure("a request event in \(state)")
            return
        }
        change(&request)
    }
}
