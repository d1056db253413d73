import NIOCore

/// Where a request's `Exchange` starts and ends. Every way a request can end (its response
/// sent, an error answered, the client gone, a forced close) comes through `endExchange`, so
/// what ending means is written once.
extension DownstreamConnectionHandler {
    /// Takes an exchange for the request whose head has come (or failed), unless one is in progress.
    func beginExchange() {
        guard exchange.isVacant else { return }
        exchange = worker.takeExchange()
        exchange.policy.stream = self
        exchange.generation = worker.generation
        requestSerial &+= 1
    }

    /// The one end of every request: counted and logged once (`499` if the client never had
    /// an answer), the log phase run if the response went out (else the script stops where
    /// it stands), waits cancelled, the try settled, the upstream connection pooled when the
    /// exchange left it clean and closed otherwise, and the exchange given back whole. A
    /// no-op between requests.
    func endExchange(completed: Bool) {
        let ended = exchange
        guard !ended.isVacant else { return }
        recordRequest(status: lifecycle.responseStarted ? ended.sentStatus : 499)
        if ended.policy.used { ended.policy.end(completed: completed) }
        finishTry()
        if let upstream = ended.attempt.upstream {
            ended.attempt.upstream = nil
            if completed, ended.upstreamReusable, lifecycle.requestBodyDone, let pool = ended.attempt.pool {
                pool.release(upstream)
            } else {
                // Mid-message (or out of step): never reused.
                upstream.close()
            }
        }
        exchange = worker.vacantExchange
        worker.giveBack(ended)
    }

    /// The exchange is over (its answer written): the connection serves the client's next
    /// request, or closes once the answer is out, as the lifecycle decided.
    func finishExchange(_ next: ConnectionStateMachine.Next) {
        // The upstream's read-complete (which flushes) reaches us only while we hold it.
        io.flush()
        endExchange(completed: true)
        switch lifecycle.exchangeEnded(next, buffered: inbound != nil) {
        case .readNextHead:
            lastActivity = worker.clock.now()
            processInbound()
            updateReads()
        case .waitForNext:
            lastActivity = worker.clock.now()
            updateReads()
        case .closeAfterFlush(let linger):
            // A client that may still be sending (a refused head or body) is drained, not reset.
            io.closeAfterFlush(linger: linger)
        case .nothing:
            break
        }
    }
}
