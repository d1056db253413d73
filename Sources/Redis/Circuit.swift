import NIOCore

/// A circuit breaker for one Redis connection: after `threshold` consecutive failures it
/// opens, and commands fail at once instead of each waiting for its timeout; after the open
/// time one probe goes through (half-open), whose success closes it and whose failure opens
/// it again for twice as long, up to `maxOpen`.
struct Circuit {
    enum State: Equatable {
        case closed
        case open(until: NIODeadline)
        /// A probe is in flight; others fail fast until it returns.
        case probing
    }

    let threshold: Int
    let baseOpen: TimeAmount
    let maxOpen: TimeAmount
    private(set) var state = State.closed
    private(set) var failures = 0
    private var openFor: TimeAmount

    init(threshold: Int, open: TimeAmount, maxOpen: TimeAmount) {
        self.threshold = threshold
        self.baseOpen = open
        self.maxOpen = maxOpen
        self.openFor = open
    }

    enum Admission {
        case pass
        /// Pass, as the probe of a half-open circuit.
        case probe
        case reject
    }

    mutating func admit(now: NIODeadline) -> Admission {
        switch state {
        case .closed:
            return .pass
        case .probing:
            return .reject
        case .open(let until):
            guard now >= until else { return .reject }
            state = .probing
            return .probe
        }
    }

    /// Returns true if this closed an open circuit.
    mutating func succeeded() -> Bool {
        failures = 0
        openFor = baseOpen
        if state == .closed { return false }
        state = .closed
        return true
    }

    /// Returns true if this opened the circuit (from closed or from a failed probe).
    mutating func failed(now: NIODeadline) -> Bool {
        failures += 1
        switch state {
        case .closed:
            guard failures >= threshold else { return false }
            state = .open(until: now + openFor)
            return true
        case .probing:
            openFor = min(openFor * 2, maxOpen)
            state = .open(until: now + openFor)
            return true
        case .open:
            return false
        }
    }

    var isOpen: Bool { state != .closed }
}
