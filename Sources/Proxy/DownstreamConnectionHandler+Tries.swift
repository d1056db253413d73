import Config
import NIOCore
import Telemetry
import Logging

/// A request's tries: the balancer picks a target, passive health hears how each try went,
/// and a try that fails before any answer came goes to another target while the request is
/// safe to send again and the upstream's retry budget allows.
extension DownstreamConnectionHandler {
    /// Sends the request to the target the balancer picks (or `index`, picked already), or
    /// answers `503` if every target is ejected.
    func startTry(route: CompiledRoute, index picked: Int? = nil) {
        guard let balancer = exchange.attempt.balancer, let head = exchange.attempt.forwardedHead else { return }
        let pool: TargetPool
        if let target = exchange.policy.edits.target {
            // A target the script named: one try, no balancing.
            guard let dynamic = worker.dynamicPool(target.key, target.address, upstream: balancer.upstream) else {
                respondError(.tooManyScriptTargets)
                return
            }
            pool = dynamic
        } else {
            guard let index = picked ?? balancer.pick(tried: exchange.attempt.tried, key: exchange.attempt.hashKey, now: lastActivity) else {
                respondError(.noHealthyTarget)
                return
            }
            if index < 64 { exchange.attempt.tried |= 1 << UInt64(index) }
            pool = balancer.pool(index)
        }
        exchange.attempt.count += 1
        exchange.attempt.start = worker.clock.now()
        exchange.trace.trySpanID = worker.requestIDs.next64() | 1
        if exchange.attempt.count > 1 { worker.metrics.upstream(.retry, upstream: balancer.upstream.metricID) }
        exchange.attempt.pool = pool
        pool.health.inFlight += 1
        pool.breaker.sent(lastActivity, pool.settings.breaker)
        exchange.attempt.pending = true
        exchange.attempt.upstreamHead = makeUpstreamHead(head, route: route, pool: pool)
        lifecycle.tryStarted()
        armTimer()
        if let connection = pool.takeIdle() {
            begin(connection)
        } else if pool.mayConnect {
            connectUpstream(pool)
        } else {
            waitForConnection(pool)
        }
    }

    /// Every connection to the target is busy: wait in its queue, briefly.
    private func waitForConnection(_ pool: TargetPool) {
        let serial = requestSerial
        var timer: Scheduled<Void>?
        let id = pool.wait { [self] connection in
            timer?.cancel()
            guard requestSerial == serial, lifecycle.awaitingConnection, exchange.attempt.pool === pool else {
                // Gone meanwhile: what it was given goes to the next in line.
                if let connection { pool.release(connection) } else { pool.wakeNext() }
                return
            }
            if let connection { begin(connection) } else { connectUpstream(pool) }
        }
        guard let id else {
            respondError(.poolFull)
            return
        }
        timer = worker.eventLoop.assumeIsolatedUnsafeUnchecked().scheduleTask(in: pool.settings.queueTimeout) { [self] in
            pool.cancelWait(id)
            guard requestSerial == serial, lifecycle.awaitingConnection else { return }
            respondError(.poolWaitTimeout)
        }
    }

    /// The try's target answered (a response head came): it is reachable; a 5xx counts
    /// against its breaker.
    func tryAnswered(status: Int) {
        guard exchange.attempt.pending, let pool = exchange.attempt.pool else { return }
        exchange.attempt.pending = false
        if let balancer = exchange.attempt.balancer {
            let nanoseconds = (worker.clock.now() - exchange.attempt.start).nanoseconds
            exchange.record.upstreamNanoseconds += nanoseconds
            if worker.generation.shared.metricsEnabled {
                worker.metrics.upstreamTry(upstream: balancer.upstream.metricID, seconds: Double(nanoseconds) / 1e9)
            }
        }
        if exchange.traced { recordTrySpan(pool, status: status, error: nil) }
        pool.health.inFlight -= 1
        pool.health.succeeded()
        exchange.attempt.forwardedHead = nil
        worker.breakerRecord(pool, success: status < 500)
    }

    /// Ends the try's count in flight without a verdict (the client left, the request ended).
    func finishTry() {
        guard exchange.attempt.pending, let pool = exchange.attempt.pool else { return }
        exchange.attempt.pending = false
        if exchange.traced { recordTrySpan(pool, status: 0, error: "cancelled") }
        pool.health.inFlight -= 1
        pool.breaker.abandoned()
    }

    /// The try failed before any answer: count it against the target, then retry elsewhere
    /// (if the error allows) or answer with it.
    func tryFailed(_ error: ProxyError) {
        if let upstream = exchange.attempt.upstream {
            self.exchange.attempt.upstream = nil
            upstream.close()
        }
        if exchange.attempt.pending, let pool = exchange.attempt.pool {
            exchange.attempt.pending = false
            if exchange.traced { recordTrySpan(pool, status: 0, error: error.message) }
            pool.health.inFlight -= 1
            if pool.health.failed(worker.clock.now(), pool.settings) {
                worker.logger.warning(
                    "upstream target ejected after failed tries",
                    metadata: ["target": "\(pool.key.host):\(pool.key.port)", "error": "\(error.message)", "request_id": "\(String(buffer: exchange.requestID))"])
            }
            worker.breakerRecord(pool, success: false)
        }
        // Another target, if one is left and the budget allows: else this try's failure stands.
        if error.retryable, canRetry(), let route = exchange.route, let balancer = exchange.attempt.balancer, let index = balancer.pick(tried: exchange.attempt.tried, key: exchange.attempt.hashKey, now: worker.clock.now()), balancer.takeRetry(worker.clock.now()) {
            startTry(route: route, index: index)
            return
        }
        respondError(error)
    }

    /// Never after the client got a byte; only what can be sent again whole (a body still
    /// streaming, only while no try has started sending it); idempotent
    /// methods unless the route allows more; within the tries and the retry budget.
    private func canRetry() -> Bool {
        guard let balancer = exchange.attempt.balancer, let route = exchange.route, exchange.attempt.forwardedHead != nil, lifecycle.mayRetry, exchange.attempt.retryableBody || !exchange.attempt.bodyStarted, exchange.policy.edits.target == nil,
            exchange.attempt.count < (exchange.policy.edits.retries.map { $0 + 1 } ?? balancer.upstream.maxTries), exchange.request.isIdempotent || route.retryNonIdempotent else { return false }
        return true
    }

    /// The key `balancer: hash` places the request by, from the request as the upstream gets it.
    func requestHashKey(_ head: ByteBuffer, _ balancer: Upstream.Balancer) -> UInt64? {
        guard case .hash(let key) = balancer else { return nil }
        switch key {
        case .clientIP:
            return HashRing.hash(clientAddress)
        case .header(let name):
            return firstHeader(head, name).map(HashRing.hash)
        case .cookie(let name):
            guard let cookies = firstHeader(head, "Cookie") else { return nil }
            // `a=1; b=2`: the value of `name`.
            for pair in cookies.split(separator: UInt8(ascii: ";")) {
                let trimmed = pair.drop { $0 == UInt8(ascii: " ") }
                guard let eq = trimmed.firstIndex(of: UInt8(ascii: "=")) else { continue }
                if trimmed[trimmed.startIndex..<eq].elementsEqual(name.utf8) { return HashRing.hash(trimmed[(eq + 1)...]) }
            }
            return nil
        }
    }

    private func firstHeader(_ head: ByteBuffer, _ name: String) -> [UInt8]? {
        var found: [UInt8]?
        head.withUnsafeReadableBytes { p in
            var n = Array(name.utf8)
            n.withUnsafeMutableBytes { nameBytes in
                exchange.request.headers.fields.withUnsafeBufferPointer { fields in
                    HeaderView.with(p, fields, &exchange.policy.edits.headers) { view in
                        view.forEach(UnsafeRawBufferPointer(nameBytes)) { value in
                            found = Array(value)
                            return false
                        }
                    }
                }
            }
        }
        return found
    }
}
