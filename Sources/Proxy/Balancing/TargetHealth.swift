import NIOCore

/// Passive health of one target on one event loop: tries that fail in a row (refused,
/// reset, timed out before an answer) eject it for a while, each time longer while it keeps
/// failing; any answer brings it back to good standing. Loop-owned, so nothing locks.
struct TargetHealth {
    /// Requests sent to the target and not yet answered (least-request balancing).
    var inFlight = 0
    private(set) var failures = 0
    /// Ejections in a row without a success since: the next one lasts `2^ejections` times longer.
    private(set) var ejections = 0
    private(set) var ejectedUntil = NIODeadline.uptimeNanoseconds(0)

    @inline(__always)
    func isAvailable(_ now: NIODeadline) -> Bool { now >= ejectedUntil }

    func isEjected(_ now: NIODeadline) -> Bool { now < ejectedUntil }

    /// Returns true if this ejected the target.
    mutating func failed(_ now: NIODeadline, _ settings: PoolSettings) -> Bool {
        failures += 1
        // Back from an ejection on probation: one more failure ejects it again.
        guard failures >= (ejections > 0 ? 1 : settings.ejectAfter), now >= ejectedUntil else { return false }
        let base = settings.ejectTime.nanoseconds
        let time = min(base << min(ejections, 20), settings.maxEjectTime.nanoseconds)
        ejectedUntil = now + .nanoseconds(time)
        ejections += 1
        failures = 0
        return true
    }

    mutating func succeeded() {
        failures = 0
        ejections = 0
    }
}
