import NIOCore

/// A circuit breaker for one target on one event loop. Closed, it counts answers; it opens
/// after `failures` failed answers in a row, or when at least `minRequests` answers in the
/// last window failed at `ratio` or more (a 5xx, or a try that got no answer). Open, the
/// balancer skips the target for `openTime`; then it half-opens and lets `probes` requests
/// through: all of them succeeding closes it, any failing opens it again.
struct TargetBreaker {
    enum State: String, Sendable {
        case closed
        case open
        case halfOpen = "half_open"
    }

    struct Settings: Sendable, Equatable {
        var failures = 5
        var ratio = 0.5
        var minRequests = 20
        var window = TimeAmount.seconds(10)
        var openTime = TimeAmount.seconds(5)
        var probes = 1
    }

    private(set) var state = State.closed
    private var consecutive = 0
    private var windowStart = NIODeadline.uptimeNanoseconds(0)
    private var requests = 0
    private var failed = 0
    private var openUntil = NIODeadline.uptimeNanoseconds(0)
    private var probesOut = 0
    private var probesPassed = 0

    /// Whether a request may go to the target now (without taking a probe).
    @inline(__always)
    func admits(_ now: NIODeadline, _ s: Settings) -> Bool {
        switch state {
        case .closed: return true
        case .open: return now >= openUntil
        case .halfOpen: return probesOut < s.probes
        }
    }

    /// A request was sent to the target: in half-open, it is a probe.
    mutating func sent(_ now: NIODeadline, _ s: Settings) {
        if state == .open, now >= openUntil {
            state = .halfOpen
            probesOut = 0
            probesPassed = 0
        }
        if state == .halfOpen { probesOut += 1 }
    }

    /// A request sent to the target ended without an answer to judge (the client left).
    mutating func abandoned() {
        if state == .halfOpen { probesOut = max(0, probesOut - 1) }
    }

    /// Records an answer; returns the new state if it changed.
    mutating func record(success: Bool, _ now: NIODeadline, _ s: Settings) -> State? {
        switch state {
        case .halfOpen:
            probesOut = max(0, probesOut - 1)
            if !success { return open(now, s) }
            probesPassed += 1
            guard probesPassed >= s.probes else { return nil }
            state = .closed
            consecutive = 0
            requests = 0
            failed = 0
            windowStart = now
            return .closed
        case .open:
            return nil  // answers to requests sent before it opened
        case .closed:
            if now - windowStart > s.window {
                windowStart = now
                requests = 0
                failed = 0
            }
            requests += 1
            if success {
                consecutive = 0
                return nil
            }
            failed += 1
            consecutive += 1
            if consecutive >= s.failures || (requests >= s.minRequests && Double(failed) >= s.ratio * Double(requests)) {
                return open(now, s)
            }
            return nil
        }
    }

    private mutating func open(_ now: NIODeadline, _ s: Settings) -> State {
        state = .open
        openUntil = now + s.openTime
        probesOut = 0
        return .open
    }
}
