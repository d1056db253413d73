import Config
import NIOCore
import Testing

@testable import Proxy

/// The balancers on their own: weights, least-request, consistent hashing, ejection and
/// the retry budget.
@Suite struct BalancerTests {
    static func balancer(_ weights: [Int], _ kind: Upstream.Balancer = .roundRobin) throws -> UpstreamBalancer {
        var upstream = Upstream(name: "u", targets: weights.enumerated().map { Upstream.Target(address: SocketAddressSpec(host: "127.0.0.1", port: 10_000 + $0.offset), weight: $0.element) })
        upstream.balancer = kind
        let compiled = try CompiledUpstream(upstream)
        let loop = ManualLoop()
        return UpstreamBalancer(
            upstream: compiled,
            targets: compiled.targets.map { (TargetPool(key: $0.key, address: $0.address, settings: compiled.settings, eventLoop: loop), $0) })
    }

    @Test func weightedRoundRobinFollowsWeights() throws {
        let b = try Self.balancer([1, 2, 3])
        var counts = [0, 0, 0]
        for _ in 0..<600 { counts[b.pick(now: .now())!] += 1 }
        #expect(counts == [100, 200, 300])
    }

    @Test func leastRequestAvoidsTheBusyTarget() throws {
        let b = try Self.balancer([1, 1], .leastRequest)
        var counts = [0, 0]
        for _ in 0..<10_000 { counts[b.pick(now: .now())!] += 1 }
        // Equal load: about half each.
        #expect(abs(counts[0] - 5000) < 400, "\(counts)")
        // Target 0 busy: it is chosen only when both random draws land on it (about 1/4).
        b.pool(0).health.inFlight = 10
        counts = [0, 0]
        for _ in 0..<10_000 { counts[b.pick(now: .now())!] += 1 }
        #expect(abs(counts[0] - 2500) < 400, "\(counts)")
    }

    @Test func consistentHashingMovesAboutOneNthOfTheKeys() throws {
        let four = try Self.balancer([1, 1, 1, 1], .hash(.clientIP))
        let five = try Self.balancer([1, 1, 1, 1, 1], .hash(.clientIP))
        let keys = (0..<20_000).map { HashRing.hash(Array("user-\($0)".utf8)) }
        var moved = 0, movedElsewhere = 0
        for key in keys {
            let before = four.pick(key: key, now: .now())!, after = five.pick(key: key, now: .now())!
            if before != after {
                moved += 1
                if after != 4 { movedElsewhere += 1 }
            }
        }
        // About 1/5 move, and only to the new target.
        #expect(abs(Double(moved) / Double(keys.count) - 0.2) < 0.05, "moved \(moved)")
        #expect(movedElsewhere == 0)
        // The same key always lands on the same target.
        #expect((0..<10).allSatisfy { _ in four.pick(key: keys[0], now: .now()) == four.pick(key: keys[0], now: .now()) })
    }

    @Test func ejectedAndTriedTargetsAreSkipped() throws {
        let b = try Self.balancer([1, 1, 1])
        let now = NIODeadline.now()
        // Three failures in a row eject target 0 for its eject time.
        let settings = b.pool(0).settings
        for _ in 0..<3 { _ = b.pool(0).health.failed(now, settings) }
        #expect(b.pool(0).health.isEjected(now))
        for _ in 0..<30 { #expect(b.pick(now: .now()) != 0) }
        // A request that tried target 1 gets target 2; with all tried or ejected, none.
        #expect(b.pick(tried: 0b010, now: .now()) == 2)
        #expect(b.pick(tried: 0b110, now: .now()) == nil)
        // Back after the eject time, on probation: one failure ejects it for twice as long.
        var health = b.pool(0).health
        let later = now + .seconds(2)
        #expect(health.isAvailable(later))
        let ejectedAgain = health.failed(later, b.pool(0).settings)
        #expect(ejectedAgain)
        #expect(!health.isAvailable(later + .milliseconds(1500)) && health.isAvailable(later + .milliseconds(2000)))
        health.succeeded()
        let ejectedAfterSuccess = health.failed(later + .seconds(5), b.pool(0).settings)
        #expect(!ejectedAfterSuccess)
    }

    @Test func theRetryBudgetCapsRetries() {
        var budget = RetryBudget(ratio: 0.2, minimum: 3)
        let now = NIODeadline.now()
        for _ in 0..<100 { budget.request(now) }
        var allowed = 0
        for _ in 0..<100 where budget.retry(now) { allowed += 1 }
        #expect(allowed == 3 + 20)
    }
}
