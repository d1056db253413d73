import NIOCore
import Testing

@testable import Proxy

/// The connection's lifecycle without a socket: each move the handler relies on, driven by
/// events with time passed in.
@Suite struct ConnectionStateMachineTests {
    typealias Machine = ConnectionStateMachine
    static let t0 = NIODeadline.uptimeNanoseconds(1_000_000_000)
    static let idle = TimeAmount.seconds(60)
    static let request = TimeAmount.seconds(30)

    /// A machine with a parsed request in progress.
    static func started(
        keepAlive: Bool = true, bodyDone: Bool = true, idempotent: Bool = true, expectContinue: Bool = false, at start: NIODeadline = t0
    ) -> Machine {
        var m = Machine()
        #expect(m.clientBytes() == .parseHead)
        let began1 = m.headBytes(now: start)
        #expect(began1)
        m.headParsed(keepAlive: keepAlive, bodyDone: bodyDone, idempotent: idempotent, expectContinue: expectContinue, draining: false)
        return m
    }

    /// A request sent upstream on a connection, its response not yet started.
    static func proxying(bodyDone: Bool = true, idempotent: Bool = true) -> Machine {
        var m = started(bodyDone: bodyDone, idempotent: idempotent)
        m.tryStarted()
        #expect(m.awaitingConnection)
        m.connected()
        return m
    }

    func timer(_ m: inout Machine, at now: NIODeadline, lastActivity: NIODeadline = t0) -> Machine.TimerAction {
        m.timerFired(now: now, lastActivity: lastActivity, idleTimeout: Self.idle, requestTimeout: Self.request)
    }

    // MARK: timeouts

    @Test func eachTimeoutAtItsOwnDeadline() {
        // Idle between requests: the idle timeout from the last activity, then a close.
        var idle = Machine()
        #expect(idle.deadline(lastActivity: Self.t0, idleTimeout: Self.idle, requestTimeout: Self.request) == Self.t0 + Self.idle)
        let fired1 = timer(&idle, at: Self.t0 + .seconds(59))
        #expect(fired1 == .rearm)
        let fired2 = timer(&idle, at: Self.t0 + .seconds(61))
        #expect(fired2 == .close)
        #expect(idle.isClosing)

        // A head that never completes: the request timeout from its first byte, and a 408.
        var head = Machine()
        let began2 = head.headBytes(now: Self.t0)
        #expect(began2)
        let began3 = head.headBytes(now: Self.t0 + .seconds(5))
        #expect(!began3, "more bytes of the same head keep its start")
        #expect(head.deadline(lastActivity: Self.t0 + .seconds(5), idleTimeout: Self.idle, requestTimeout: Self.request) == Self.t0 + Self.request)
        let fired3 = timer(&head, at: Self.t0 + .seconds(31))
        #expect(fired3 == .answer(.clientTimeout))
        #expect(head.errorAction() == .answer)
        let next1 = head.answering(mustClose: ProxyError.clientTimeout.closesConnection, bodyDropped: true)
        #expect(next1 == .closeAfterFlush)

        // A request whose upstream is slow: the same deadline from the request's first byte,
        // whatever happened since; answered while nothing went out, cut after.
        var slow = Self.proxying()
        let fired4 = timer(&slow, at: Self.t0 + .seconds(29), lastActivity: Self.t0 + .seconds(29))
        #expect(fired4 == .rearm)
        let fired5 = timer(&slow, at: Self.t0 + .seconds(31), lastActivity: Self.t0 + .seconds(31))
        #expect(fired5 == .answer(.requestTimeout))
        #expect(slow.errorAction() == .answer)
        slow.responseHeadSent()
        #expect(slow.errorAction() == .cut)

        // A closing connection's timer does nothing.
        var closing = Machine()
        let closing1 = closing.closeNow()
        #expect(closing1)
        let fired6 = timer(&closing, at: Self.t0 + .seconds(3600))
        #expect(fired6 == .nothing)
    }

    @Test func upstreamTimeoutsDependOnTheResponse() {
        var m = Self.proxying()
        #expect(m.upstreamTimedOut() == .tryFailed(.upstreamTimeout))
        m.responseCollecting()
        #expect(m.upstreamTimedOut() == .failed(.upstreamTimeout))
        m.responseCollected()
        m.responseHeadSent()
        #expect(m.upstreamTimedOut() == .cut)
    }

    // MARK: the upstream closing

    @Test func aStalePooledConnectionIsRetriedOnceForSafeRequests() {
        var m = Self.proxying()
        let closed1 = m.upstreamClosed(reused: true, canResend: true, untilClose: false)
        #expect(closed1 == .reconnect)
        #expect(m.awaitingConnection)
        m.connected()
        // Once only: the second stale connection is a failed try.
        let closed2 = m.upstreamClosed(reused: true, canResend: true, untilClose: false)
        #expect(closed2 == .tryFailed(.upstreamClosed))

        // A fresh connection that closes is a failed try, not a stale one.
        var fresh = Self.proxying()
        let closed3 = fresh.upstreamClosed(reused: false, canResend: true, untilClose: false)
        #expect(closed3 == .tryFailed(.upstreamClosed))
        // Not for a POST, nor for a request whose body is still streaming, nor once bytes came back.
        var post = Self.proxying(idempotent: false)
        let closed4 = post.upstreamClosed(reused: true, canResend: true, untilClose: false)
        #expect(closed4 == .tryFailed(.upstreamClosed))
        var streaming = Self.proxying(bodyDone: false)
        let closed5 = streaming.upstreamClosed(reused: true, canResend: true, untilClose: false)
        #expect(closed5 == .tryFailed(.upstreamClosed))
        var answered = Self.proxying()
        let closed6 = answered.upstreamClosed(reused: true, canResend: false, untilClose: false)
        #expect(closed6 == .tryFailed(.upstreamClosed))
    }

    @Test func anUpstreamResetMidBodyCutsTheClient() {
        var m = Self.proxying()
        m.responseHeadSent()
        #expect(!m.mayRetry)
        let closed7 = m.upstreamClosed(reused: false, canResend: false, untilClose: false)
        #expect(closed7 == .cut)
        // A close-delimited body ends the response instead.
        var untilClose = Self.proxying()
        untilClose.responseHeadSent()
        let closed8 = untilClose.upstreamClosed(reused: false, canResend: false, untilClose: true)
        #expect(closed8 == .responseEnded)
        let (next, clean) = untilClose.responseFinished()
        #expect(next == .serveNext && clean)
        // A response phase collecting the body: its end, or a failure.
        var collecting = Self.proxying()
        collecting.responseCollecting()
        let closed9 = collecting.upstreamClosed(reused: false, canResend: false, untilClose: true)
        #expect(closed9 == .collectedToClose)
        let closed10 = collecting.upstreamClosed(reused: false, canResend: false, untilClose: false)
        #expect(closed10 == .failed(.upstreamClosed))
    }

    // MARK: ending requests

    @Test func anEarlyAnswerWithAnUnreadBodyCloses() {
        // The body has not all arrived: it cannot be told from a next request.
        var unread = Self.started(bodyDone: false)
        unread.policyStarted()
        #expect(unread.clientBytes() == .holdForPolicy)
        let next2 = unread.answering(mustClose: false, bodyDropped: false)
        #expect(next2 == .closeAfterFlush)
        let ended1 = unread.exchangeEnded(.closeAfterFlush, buffered: true)
        #expect(ended1 == .closeAfterFlush(linger: true))
        #expect(unread.clientBytes() == .drop)
        // The rest of the body had arrived and was dropped: the connection goes on.
        var dropped = Self.started(bodyDone: false)
        dropped.policyStarted()
        let next3 = dropped.answering(mustClose: false, bodyDropped: true)
        #expect(next3 == .serveNext)
        #expect(dropped.requestBodyDone)
        let ended2 = dropped.exchangeEnded(.serveNext, buffered: false)
        #expect(ended2 == .waitForNext)
        // The origin answered before reading the body: both sides close after the response.
        var early = Self.proxying(bodyDone: false)
        #expect(early.clientBytes() == .forwardBody)
        early.responseHeadSent()
        let (next, clean) = early.responseFinished()
        #expect(next == .closeAfterFlush && !clean)
        #expect(early.closesAfterResponse)
    }

    @Test func continueIsSentOnceAndOnlyWhenAsked() {
        var asked = Self.started(bodyDone: false, expectContinue: true)
        asked.policyStarted()
        let wanted1 = asked.bodyWanted()
        #expect(wanted1)
        let wanted2 = asked.bodyWanted()
        #expect(!wanted2, "one 100 Continue per request")
        var notAsked = Self.started(bodyDone: false)
        let wanted3 = notAsked.bodyWanted()
        #expect(!wanted3)
        var bodyIn = Self.started(bodyDone: true, expectContinue: true)
        let wanted4 = bodyIn.bodyWanted()
        #expect(!wanted4)
    }

    @Test func pipelinedRequestsAreServedInTurn() {
        var m = Self.proxying()
        // The next request's bytes wait while this one is in progress.
        #expect(m.clientBytes() == .hold)
        m.responseHeadSent()
        let (next, _) = m.responseFinished()
        let ended3 = m.exchangeEnded(next, buffered: true)
        #expect(ended3 == .readNextHead)
        let began4 = m.headBytes(now: Self.t0 + .seconds(1))
        #expect(began4)
        m.headParsed(keepAlive: false, bodyDone: true, idempotent: true, expectContinue: false, draining: false)
        // The second said `Connection: close`: served, then the connection ends.
        #expect(m.closesAfterResponse)
        m.tryStarted()
        m.connected()
        m.responseHeadSent()
        let (last, _) = m.responseFinished()
        #expect(last == .closeAfterFlush)
        let ended4 = m.exchangeEnded(last, buffered: true)
        #expect(ended4 == .closeAfterFlush(linger: true), "bytes past the request: drained")
    }

    @Test func aFinishedExchangeClosesWithoutLingeringUnlessTheClientMayStillSend() {
        // `Connection: close`, the whole request read, nothing after it: closed at once.
        var closing = Machine()
        _ = closing.headBytes(now: Self.t0)
        closing.headParsed(keepAlive: false, bodyDone: true, idempotent: true, expectContinue: false, draining: false)
        closing.tryStarted()
        closing.connected()
        closing.responseHeadSent()
        let (last, _) = closing.responseFinished()
        let closed = closing.exchangeEnded(last, buffered: false)
        #expect(closed == .closeAfterFlush(linger: false))
        // An answer of ours (a refusal, say) drains: the client may be sending still.
        var refused = Machine()
        _ = refused.headBytes(now: Self.t0)
        refused.headParsed(keepAlive: false, bodyDone: true, idempotent: true, expectContinue: false, draining: false)
        let answered = refused.answering(mustClose: true, bodyDropped: false)
        let refusedEnd = refused.exchangeEnded(answered, buffered: false)
        #expect(refusedEnd == .closeAfterFlush(linger: true))
    }

    @Test func drainingClosesIdleConnectionsAndEndsBusyOnesAfterTheirResponse() {
        var idle = Machine()
        let drained1 = idle.drain(buffered: false)
        #expect(drained1)
        var busy = Self.proxying()
        let drained2 = busy.drain(buffered: false)
        #expect(!drained2)
        busy.responseHeadSent()
        let finished1 = busy.responseFinished()
        #expect(finished1.next == .closeAfterFlush)
    }

    // MARK: the client leaving

    @Test func theClientLeavingDuringTheUpstreamWait() {
        var m = Self.started()
        m.tryStarted()
        #expect(m.awaitingConnection)
        let left1 = m.clientClosed()
        #expect(left1)
        // The connection that comes late is not used, and nothing more is read or answered.
        #expect(!m.awaitingConnection)
        #expect(m.clientBytes() == .drop)
        #expect(m.errorAction() == .cut)
        let left2 = m.clientClosed()
        #expect(!left2, "closed once")
        #expect(m.readsPaused(buffered: 0, limit: 1, bodyWaitLimit: nil, upstreamWritable: true))
    }

    // MARK: flow control

    @Test func readsPauseWhereTheyMust() {
        let idle = Machine()
        #expect(!idle.readsPaused(buffered: 1 << 20, limit: 64, bodyWaitLimit: nil, upstreamWritable: false))
        var policy = Self.started(bodyDone: false)
        policy.policyStarted()
        #expect(!policy.readsPaused(buffered: 100, limit: 64, bodyWaitLimit: 1000, upstreamWritable: false))
        #expect(policy.readsPaused(buffered: 100, limit: 64, bodyWaitLimit: nil, upstreamWritable: false))
        // A streamed body goes as fast as the upstream takes it.
        let streaming = Self.proxying(bodyDone: false)
        #expect(streaming.readsPaused(buffered: 0, limit: 64, bodyWaitLimit: nil, upstreamWritable: false))
        #expect(!streaming.readsPaused(buffered: 0, limit: 64, bodyWaitLimit: nil, upstreamWritable: true))
    }
}
