import NIOCore
import Telemetry
import Logging

/// One `upstream.call`: a small request through the named upstream's own machinery, as a
/// proxied request's tries go. Its balancer picks the target (ejected and open-breaker
/// targets skipped); the connection comes from the target's kept-alive pool (its limits and
/// queue apply) and goes back to it when the answer was clean; the try counts in passive
/// health, the breaker and the upstream's metrics; a try that fails before any answer goes
/// to another target if the call is idempotent and the retry budget allows. Everything runs
/// on the worker's loop: no name lookup (targets' addresses are the generation's), no thread hop.
final class Subrequest: UpstreamExchange {
    enum Failure: Error {
        case timeout, tooLarge, unavailable, noTarget
    }

    /// What a call asks for.
    struct Request {
        var method: String
        var path: String
        var headers: [(String, String)]
        var body: [UInt8]?
        var timeout: TimeAmount
        var maxBytes: Int

        /// Whether the call may be sent again to another target (RFC 9110 9.2.2).
        /// (The whole body is in memory, so a call with one can be sent again too.)
        var idempotent: Bool {
            switch method {
            case "GET", "HEAD", "OPTIONS", "TRACE", "PUT", "DELETE": return true
            default: return false
            }
        }
    }

    struct Response {
        var status: Int
        var headers: [(String, String)]
        var body: ByteBuffer
    }

    typealias Completion = (Result<Response, Failure>) -> Void

    private let worker: ProxyWorker
    private let balancer: UpstreamBalancer
    private let request: Request
    private var completion: Completion?
    private var deadline: NIODeadline
    private var timer: Scheduled<Void>?

    /// The current try's target, connection, and queue place while it waits for one.
    private var pool: TargetPool?
    private var connection: UpstreamConnectionHandler?
    private var queued: Int?
    private var reader: ResponseReader
    /// A bit per target index already tried.
    private var tried: UInt64 = 0
    private var tries = 0
    private var tryStart = NIODeadline.uptimeNanoseconds(0)
    /// `pool.health.inFlight` counts the current try.
    private var pending = false
    /// The try was sent again on a new connection after a pooled one turned out closed.
    private var retriedStale = false
    /// `send` has not returned yet: a script that called is still running, so an outcome
    /// known at once (no target, a full queue) is delivered on the loop's next turn.
    private var starting = true

    private init(worker: ProxyWorker, balancer: UpstreamBalancer, request: Request, completion: @escaping Completion) {
        self.worker = worker
        self.balancer = balancer
        self.request = request
        self.completion = completion
        self.deadline = worker.clock.now() + request.timeout
        self.reader = ResponseReader(maxBytes: request.maxBytes, isHEAD: request.method == "HEAD")
    }

    /// Sends `request` through `balancer`'s upstream; `completion` runs once, on the worker's loop.
    static func send(_ request: Request, through balancer: UpstreamBalancer, on worker: ProxyWorker, completion: @escaping Completion) {
        let call = Subrequest(worker: worker, balancer: balancer, request: request, completion: completion)
        call.start()
    }

    private func start() {
        let now = worker.clock.now()
        balancer.countRequest(now)
        // The call owns itself until it finishes: the timer and the connection hold it.
        timer = worker.eventLoop.assumeIsolatedUnsafeUnchecked().scheduleTask(deadline: deadline) { [self] in
            timer = nil
            if pending { countFailure("timeout") }
            worker.metrics.upstream(.timeout, upstream: balancer.upstream.metricID)
            finish(.failure(.timeout))
        }
        nextTry(now)
        starting = false
    }

    private func nextTry(_ now: NIODeadline) {
        guard let index = balancer.pick(tried: tried, key: nil, now: now) else {
            finish(.failure(tries == 0 ? .noTarget : .unavailable))
            return
        }
        if index < 64 { tried |= 1 << UInt64(index) }
        let pool = balancer.pool(index)
        self.pool = pool
        tries += 1
        if tries > 1 { worker.metrics.upstream(.retry, upstream: balancer.upstream.metricID) }
        tryStart = now
        pending = true
        pool.health.inFlight += 1
        pool.breaker.sent(now, pool.settings.breaker)
        reader = ResponseReader(maxBytes: request.maxBytes, isHEAD: request.method == "HEAD")
        if let idle = pool.takeIdle() {
            send(on: idle)
        } else if pool.mayConnect {
            connect(pool)
        } else {
            queued = pool.wait { [self] connection in
                guard queued != nil, completion != nil, self.pool === pool else {
                    if let connection { pool.release(connection) } else { pool.wakeNext() }
                    return
                }
                queued = nil
                if let connection { send(on: connection) } else { connect(pool) }
            }
            // The queue is full: not the target's fault, so not counted against it.
            if queued == nil { finish(.failure(.unavailable)) }
        }
    }

    private func connect(_ pool: TargetPool) {
        pool.connect().assumeIsolatedUnsafeUnchecked().whenComplete { [self] result in
            switch result {
            case .success(let connection):
                guard completion != nil, self.pool === pool, self.connection == nil else {
                    pool.release(connection)
                    return
                }
                send(on: connection)
            case .failure:
                guard completion != nil, self.pool === pool else { return }
                worker.metrics.upstream(.connectError, upstream: balancer.upstream.metricID)
                tryFailed("connect failed", retryable: true)
            }
        }
    }

    private func send(on connection: UpstreamConnectionHandler) {
        guard let pool else { return }
        self.connection = connection
        let now = worker.clock.now()
        connection.attach(self, readTimeout: max(deadline - now, .milliseconds(1)), now: now)
        connection.write(head(for: pool))
        if let body = request.body {
            var buffer = ByteBufferAllocator().buffer(capacity: body.count)
            buffer.writeBytes(body)
            connection.write(buffer)
        }
        connection.flush()
    }

    private func head(for pool: TargetPool) -> ByteBuffer {
        var head = ByteBufferAllocator().buffer(capacity: 256)
        head.writeString("\(request.method) \(request.path) HTTP/1.1\r\nHost: ")
        head.writeBytes(pool.hostHeader)
        head.writeStaticString("\r\n")
        for (name, value) in request.headers { head.writeString("\(name): \(value)\r\n") }
        if let body = request.body {
            head.writeString("Content-Length: \(body.count)\r\n")
        } else if request.method == "POST" || request.method == "PUT" || request.method == "PATCH" {
            head.writeStaticString("Content-Length: 0\r\n")
        }
        head.writeStaticString("\r\n")
        return head
    }

    // MARK: the connection's events (UpstreamExchange)

    func upstreamRead(_ buffer: ByteBuffer) {
        let wasAnswered = reader.answered
        let progress = reader.read(buffer)
        if !wasAnswered, reader.answered { answered() }
        switch progress {
        case .more:
            return
        case .done(let reusable):
            let response = Response(status: reader.status, headers: reader.headers, body: reader.body)
            giveBackConnection(clean: reusable)
            finish(.success(response))
        case .tooLarge:
            if !reader.answered { answered() }  // it answered; the answer is too large for the script
            dropConnection()
            finish(.failure(.tooLarge))
        case .invalid:
            dropConnection()
            tryFailed("invalid response", retryable: false)
        }
    }

    func upstreamReadComplete() {}

    func upstreamWritabilityChanged(writable: Bool) {}

    func upstreamClosed(error: Error?, reused: Bool) {
        connection = nil
        if error == nil, case .done = reader.closed() {
            finish(.success(Response(status: reader.status, headers: reader.headers, body: reader.body)))
            return
        }
        // A pooled connection the origin closed as it was reused (its keep-alive timeout):
        // the same target again on a new connection, once, for a call that is safe to repeat.
        if reused, !reader.answered, !retriedStale, request.idempotent, let pool {
            retriedStale = true
            reader = ResponseReader(maxBytes: request.maxBytes, isHEAD: request.method == "HEAD")
            connect(pool)
            return
        }
        tryFailed("upstream closed", retryable: !reader.answered)
    }

    func upstreamTimedOut() {
        connection = nil
        if pending { countFailure("timeout") }
        worker.metrics.upstream(.timeout, upstream: balancer.upstream.metricID)
        finish(.failure(.timeout))
    }

    // MARK: outcomes

    /// The target answered: it is reachable; a 5xx counts against its breaker.
    private func answered() {
        guard pending, let pool else { return }
        pending = false
        pool.health.inFlight -= 1
        pool.health.succeeded()
        worker.breakerRecord(pool, success: reader.status < 500)
        if worker.generation.shared.metricsEnabled {
            worker.metrics.upstreamTry(upstream: balancer.upstream.metricID, seconds: Double((worker.clock.now() - tryStart).nanoseconds) / 1e9)
        }
    }

    private func countFailure(_ reason: String) {
        guard pending, let pool else { return }
        pending = false
        pool.health.inFlight -= 1
        if pool.health.failed(worker.clock.now(), pool.settings) {
            worker.logger.warning(
                "upstream target ejected after failed tries", metadata: ["target": "\(pool.key.host):\(pool.key.port)", "by": "upstream.call", "error": "\(reason)"])
        }
        worker.breakerRecord(pool, success: false)
    }

    /// The try failed before a usable answer: another target if the call may be repeated
    /// and the budget allows, else `unavailable`.
    private func tryFailed(_ reason: String, retryable: Bool) {
        dropConnection()
        countFailure(reason)
        if let pool, let id = queued {
            queued = nil
            pool.cancelWait(id)
        }
        let now = worker.clock.now()
        if retryable, request.idempotent, tries < balancer.upstream.maxTries, now < deadline, balancer.pick(tried: tried, key: nil, now: now) != nil,
            balancer.takeRetry(now)
        {
            nextTry(now)
            return
        }
        finish(.failure(.unavailable))
    }

    private func giveBackConnection(clean: Bool) {
        guard let connection else { return }
        self.connection = nil
        if clean, let pool { pool.release(connection) } else { connection.close() }
    }

    private func dropConnection() {
        guard let connection else { return }
        self.connection = nil
        connection.close()
    }

    private func finish(_ result: Result<Response, Failure>) {
        guard let completion else { return }
        self.completion = nil
        timer?.cancel()
        timer = nil
        if let pool, let id = queued {
            queued = nil
            pool.cancelWait(id)
        }
        // A call ended mid-try (its timeout): the connection is mid-message, never reused.
        dropConnection()
        if pending, let pool {
            pending = false
            pool.health.inFlight -= 1
            pool.breaker.abandoned()
        }
        if starting {
            worker.eventLoop.assumeIsolatedUnsafeUnchecked().execute { completion(result) }
        } else {
            completion(result)
        }
    }
}

@available(*, unavailable)
extension Subrequest: Sendable {}
