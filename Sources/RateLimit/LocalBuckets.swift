import CBuckets
import Scripting

/// What one take from a token bucket decided.
public struct BucketDecision: Sendable, Equatable {
    public var allowed: Bool
    /// Whole tokens left (after this take, if allowed).
    public var remaining: Int
    /// Seconds until the same cost would be allowed; 0 if allowed.
    public var retryAfter: Double
    /// Seconds until the bucket is full again.
    public var resetAfter: Double

    public init(allowed: Bool, remaining: Int, retryAfter: Double, resetAfter: Double) {
        self.allowed = allowed
        self.remaining = remaining
        self.retryAfter = retryAfter
        self.resetAfter = resetAfter
    }
}

/// The `local` store: token buckets in the gateway's memory, shared exactly by every event
/// loop of the process without locks (`CBuckets`: one 128-bit compare-and-swap per take).
/// The table has a fixed number of slots; a bucket that has refilled frees its slot.
///
/// Keys are hashed with Swift's `Hasher`, which is seeded at random per process, so a client
/// who picks the keys (a user id, an address) cannot aim two of them at one slot.
public final class LocalBuckets: @unchecked Sendable {
    private let table: OpaquePointer
    private let clock: any ScriptClock
    /// Times in the table count from here. Changes only under a fake clock (see `take`).
    private var epoch: Int64
    /// Ticks are 1/64 ns in an Int64: about 2.2 years either side of the epoch.
    private static let span: Int64 = 1 << 56

    public init(slots: Int, clock: any ScriptClock = SystemClock()) {
        guard let table = mg_buckets_create(slots) else { fatalError("cannot map \(slots) rate-limit slots") }
        self.table = table
        self.clock = clock
        self.epoch = clock.nanoseconds()
    }

    deinit {
        mg_buckets_destroy(table)
    }

    /// Takes `cost` tokens from `key`'s bucket. Callers check 0 <= cost <= capacity, and
    /// 0 < rate <= 10^9.
    @inline(__always)
    public func take(_ key: UnsafeRawBufferPointer, capacity: Double, rate: Double, cost: Double) -> BucketDecision {
        var hasher = Hasher()
        hasher.combine(bytes: key)
        var hash = UInt64(bitPattern: Int64(hasher.finalize()))
        if hash == 0 { hash = 1 }
        var now = clock.nanoseconds() &- epoch
        if now > Self.span || now < -Self.span {
            // Only a test's fake clock jumps years (the gateway's is monotonic from start):
            // start the table over at the new time.
            mg_buckets_clear(table)
            epoch = clock.nanoseconds()
            now = 0
        }
        let r = mg_buckets_take(table, hash, capacity, rate, cost, now)
        return BucketDecision(allowed: r.allowed != 0, remaining: Int(r.remaining), retryAfter: r.retry_after, resetAfter: r.reset_after)
    }

    public func take(_ key: String, capacity: Double, rate: Double, cost: Double = 1) -> BucketDecision {
        var key = key
        return key.withUTF8 { take(UnsafeRawBufferPointer($0), capacity: capacity, rate: rate, cost: cost) }
    }

    /// Buckets dropped early because their slots' neighbourhood was full of busy buckets.
    public var evictions: UInt64 { mg_buckets_evictions(table) }
    public var slots: Int { mg_buckets_slots(table) }

    /// Empties every bucket (the harness between tests; not while requests run).
    public func clear() { mg_buckets_clear(table) }
}
