// Hot path: one pick per try, no allocation.
import Config
import NIOCore

/// Picks an upstream's target for each try, on one event loop: weighted round robin,
/// least-request (power of two choices) or consistent hashing, always skipping targets that
/// passive health has ejected and those the request already tried. Also keeps the
/// upstream's retry budget. Loop-owned; nothing locks.
final class UpstreamBalancer {
    private let pools: [TargetPool]
    let targets: [CompiledUpstream.Target]
    let upstream: CompiledUpstream
    private var current: [Int]
    private let totalWeight: Int
    private let ring: HashRing?
    private var random = SystemRandomNumberGenerator()
    private var budget: RetryBudget

    init(upstream: CompiledUpstream, targets: [(TargetPool, CompiledUpstream.Target)]) {
        self.upstream = upstream
        self.pools = targets.map(\.0)
        self.targets = targets.map(\.1)
        self.current = Array(repeating: 0, count: targets.count)
        self.totalWeight = targets.reduce(0) { $0 + $1.1.weight }
        // Every upstream has a ring: a script may hash any request (`upstream.options{hash_key=}`).
        ring = targets.count > 1 ? HashRing(targets.map { ($0.1.key, $0.1.weight) }) : nil
        budget = RetryBudget(ratio: upstream.retryBudget, minimum: upstream.retryBudgetMin)
    }

    var count: Int { pools.count }

    @inline(__always) func pool(_ index: Int) -> TargetPool { pools[index] }

    /// The target for the next try, or nil when every target is ejected or tried. `tried` is
    /// a bit per target index (targets past 63 are never excluded); `key` is the request's
    /// hash key, for `balancer: hash` (without one, round robin).
    @inline(__always)
    func pick(tried: UInt64 = 0, key: UInt64? = nil, now: NIODeadline) -> Int? {
        if pools.count == 1 {
            return tried & 1 == 0 && available(0, now) ? 0 : nil
        }
        if let key, let ring { return ring.lookup(key) { usable($0, tried, now) } }
        switch upstream.balancer {
        case .hash:
            return roundRobin(tried, now)
        case .leastRequest:
            return leastRequest(tried, now)
        case .roundRobin:
            return roundRobin(tried, now)
        }
    }

    @inline(__always)
    private func usable(_ i: Int, _ tried: UInt64, _ now: NIODeadline) -> Bool {
        (i >= 64 || tried & (1 << UInt64(i)) == 0) && available(i, now)
    }

    /// Not found down by active checks nor ejected by passive health, and its breaker lets a
    /// request through.
    @inline(__always)
    private func available(_ i: Int, _ now: NIODeadline) -> Bool {
        let pool = pools[i]
        return !pool.probedDown && pool.health.isAvailable(now) && pool.breaker.admits(now, pool.settings.breaker)
    }

    /// nginx's smooth weighted round robin over the usable targets.
    private func roundRobin(_ tried: UInt64, _ now: NIODeadline) -> Int? {
        var best = -1
        var total = 0
        for i in 0..<current.count where usable(i, tried, now) {
            current[i] += targets[i].weight
            total += targets[i].weight
            if best < 0 || current[i] > current[best] { best = i }
        }
        if best >= 0 { current[best] -= total }
        return best >= 0 ? best : nil
    }

    /// Two random usable targets (by weight); the one with fewer requests in flight per weight.
    private func leastRequest(_ tried: UInt64, _ now: NIODeadline) -> Int? {
        var usableWeight = 0
        for i in 0..<pools.count where usable(i, tried, now) { usableWeight += targets[i].weight }
        guard usableWeight > 0 else { return nil }
        func draw() -> Int {
            var r = Int.random(in: 0..<usableWeight, using: &random)
            for i in 0..<pools.count where usable(i, tried, now) {
                r -= targets[i].weight
                if r < 0 { return i }
            }
            return 0
        }
        let a = draw(), b = draw()
        // Compare inFlight/weight without dividing.
        let la = pools[a].health.inFlight * targets[b].weight, lb = pools[b].health.inFlight * targets[a].weight
        return la <= lb ? a : b
    }

    /// Counts a request (first try) for the retry budget.
    @inline(__always)
    func countRequest(_ now: NIODeadline) { budget.request(now) }

    /// Whether one more retry fits the budget; takes it if so.
    func takeRetry(_ now: NIODeadline) -> Bool { budget.retry(now) }
}

/// Retries allowed per 10 s: `minimum` plus `ratio` of the requests, counted over the current
/// and the previous 10 s window (so the budget follows the load without a timer).
struct RetryBudget {
    let ratio: Double
    let minimum: Int
    private var window = 0
    private var requests = (current: 0, previous: 0)
    private var retries = (current: 0, previous: 0)
    static let windowNanoseconds: Int64 = 10_000_000_000

    init(ratio: Double, minimum: Int) {
        self.ratio = ratio
        self.minimum = minimum
    }

    private mutating func roll(_ now: NIODeadline) {
        let w = Int(now.uptimeNanoseconds / UInt64(Self.windowNanoseconds))
        guard w != window else { return }
        if w == window + 1 {
            requests = (0, requests.current)
            retries = (0, retries.current)
        } else {
            requests = (0, 0)
            retries = (0, 0)
        }
        window = w
    }

    mutating func request(_ now: NIODeadline) {
        roll(now)
        requests.current += 1
    }

    mutating func retry(_ now: NIODeadline) -> Bool {
        roll(now)
        let allowed = minimum + Int(ratio * Double(requests.current + requests.previous))
        guard retries.current + retries.previous < allowed else { return false }
        retries.current += 1
        return true
    }
}

/// A consistent-hash ring: each target owns `100 x weight` points, placed by a stable hash of
/// its address, so every worker and every gateway maps a key to the same target, and adding
/// a target takes about 1/N of the keys, all of them to the new one.
struct HashRing {
    private let points: [(hash: UInt64, target: Int)]

    init(_ targets: [(TargetKey, Int)]) {
        var points: [(UInt64, Int)] = []
        for (index, (key, weight)) in targets.enumerated() {
            for replica in 0..<(100 * weight) {
                points.append((Self.hash(Array("\(key.host):\(key.port)#\(replica)".utf8)), index))
            }
        }
        self.points = points.sorted { $0.0 < $1.0 }
    }

    /// The first target at or after `key` on the ring that `usable` accepts.
    func lookup(_ key: UInt64, _ usable: (Int) -> Bool) -> Int? {
        guard !points.isEmpty else { return nil }
        var low = 0, high = points.count
        while low < high {
            let mid = (low + high) / 2
            if points[mid].hash < key { low = mid + 1 } else { high = mid }
        }
        var seen: UInt64 = 0
        for step in 0..<points.count {
            let target = points[(low + step) % points.count].target
            if target < 64 {
                if seen & (1 << UInt64(target)) != 0 { continue }
                seen |= 1 << UInt64(target)
            }
            if usable(target) { return target }
        }
        return nil
    }

    /// FNV-1a, then a 64-bit finalizer (splitmix): stable across processes, unlike `Hasher`,
    /// which is what keeps the key-to-target map the same on every gateway.
    static func hash(_ bytes: some Sequence<UInt8>) -> UInt64 {
        var h: UInt64 = 0xcbf2_9ce4_8422_2325
        for b in bytes {
            h ^= UInt64(b)
            h = h &* 0x100_0000_01b3
        }
        h ^= h >> 30
        h = h &* 0xbf58_476d_1ce4_e5b9
        h ^= h >> 27
        h = h &* 0x94d0_49bb_1331_11eb
        return h ^ (h >> 31)
    }
}
