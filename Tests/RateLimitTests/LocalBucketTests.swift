import Foundation
import Harness
import RateLimit
import Testing

/// The local store: token-bucket arithmetic on a fake clock, exactness across threads, and
/// bounded memory (refilled buckets give their slots back).
@Suite struct LocalBucketTests {
    @Test func takesRefillsAndTellsWhenToRetry() {
        let clock = FakeClock()
        let buckets = LocalBuckets(slots: 1024, clock: clock)
        for left in [2, 1, 0] {
            let d = buckets.take("user", capacity: 3, rate: 1)
            #expect(d.allowed && d.remaining == left)
        }
        var d = buckets.take("user", capacity: 3, rate: 1)
        #expect(!d.allowed && d.remaining == 0 && d.retryAfter == 1 && d.resetAfter == 3)
        clock.advance(0.5)
        d = buckets.take("user", capacity: 3, rate: 1)
        #expect(!d.allowed && d.retryAfter == 0.5)
        clock.advance(0.5)
        d = buckets.take("user", capacity: 3, rate: 1)
        #expect(d.allowed && d.remaining == 0)
        // Other keys have their own buckets; a long idle refills to capacity, no more.
        #expect(buckets.take("other", capacity: 3, rate: 1).remaining == 2)
        clock.advance(3600)
        #expect(buckets.take("user", capacity: 3, rate: 1).remaining == 2)
        // A cost larger than what is left is refused without spending anything.
        #expect(!buckets.take("user", capacity: 3, rate: 1, cost: 3).allowed)
        #expect(buckets.take("user", capacity: 3, rate: 1, cost: 2).allowed)
    }

    @Test func fractionalRatesStayExact() {
        let clock = FakeClock()
        let buckets = LocalBuckets(slots: 1024, clock: clock)
        // 3 per second: a token every 333,333.33 µs. Taking every millisecond from 0 s to 10 s
        // included, exactly capacity + 30 are allowed (the 30th token is due at 10 s).
        var allowed = 0
        for _ in 0...10_000 {
            if buckets.take("k", capacity: 5, rate: 3).allowed { allowed += 1 }
            clock.advance(0.001)
        }
        #expect(allowed == 5 + 30)
    }

    @Test func exactAcrossThreads() async {
        let clock = FakeClock()  // still: no refill, so exactly capacity per key is allowed
        let buckets = LocalBuckets(slots: 1024, clock: clock)
        let keys = 200, capacity = 500, threads = 4, perThread = 100_000
        let counts = await withTaskGroup(of: Int.self) { group in
            for t in 0..<threads {
                group.addTask {
                    var allowed = 0
                    for i in 0..<perThread where buckets.take("key\((i * 7 + t) % keys)", capacity: Double(capacity), rate: 1).allowed {
                        allowed += 1
                    }
                    return allowed
                }
            }
            return await group.reduce(0, +)
        }
        #expect(counts == keys * capacity)
        #expect(buckets.evictions == 0)
    }

    @Test func refilledBucketsGiveTheirSlotsBack() {
        let clock = FakeClock()
        let buckets = LocalBuckets(slots: 1024, clock: clock)
        // 100,000 distinct keys through a 1,024-slot table: each bucket is full again 10 ms
        // after its take, so its slot is reused and nothing busy is evicted.
        for i in 0..<100_000 {
            #expect(buckets.take("client-\(i)", capacity: 10, rate: 1000).allowed)
            clock.advance(0.0001)
        }
        #expect(buckets.evictions == 0)
        #expect(buckets.slots == 1024)
    }

    @Test func aFullNeighbourhoodEvictsInsteadOfGrowing() {
        let clock = FakeClock()
        let buckets = LocalBuckets(slots: 1024, clock: clock)
        // More busy buckets than slots: memory stays fixed, the fullest buckets are dropped.
        for i in 0..<5000 { _ = buckets.take("busy-\(i)", capacity: 10, rate: 0.001) }
        #expect(buckets.evictions > 0)
    }
}
