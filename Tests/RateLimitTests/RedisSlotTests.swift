import Config
import NIOCore
@testable import Redis
import Testing

/// Redis Cluster's key slots and redirections, against the specification's examples and a
/// real server's own `CLUSTER KEYSLOT` (in `RedisTopologyTests`, keys land where the cluster
/// says they belong).
@Suite struct RedisSlotTests {
    @Test func slotsFollowTheSpecification() throws {
        // CRC-16/XMODEM's check value, as the cluster specification gives it.
        #expect(Array("123456789".utf8).withUnsafeBytes { RedisSlot.crc16($0) } == 0x31C3)
        #expect(RedisSlot.of(Array("foo".utf8)) == 12182)
        // Hash tags: the part in the first {...}, if not empty.
        #expect(RedisSlot.of(Array("{user1000}.following".utf8)) == RedisSlot.of(Array("user1000".utf8)))
        #expect(RedisSlot.of(Array("foo{}{bar}".utf8)) != RedisSlot.of(Array("bar".utf8)))
        #expect(RedisSlot.of(Array("foo{{bar}}zap".utf8)) == RedisSlot.of(Array("{bar".utf8)))
        #expect(RedisSlot.of(Array("foo{bar}{zap}".utf8)) == RedisSlot.of(Array("bar".utf8)))
        // A bucket command's slot is its key's: the third argument of EVALSHA.
        var command = RedisCommand("EVALSHA", "abc", "1")
        command.append("moongate:rl:{alice}")
        command.append("10")
        #expect(command.slot == RedisSlot.of(Array("alice".utf8)))
        #expect(RedisCommand("GET", "{alice}x").slot == RedisSlot.of(Array("alice".utf8)))
    }

    @Test func redirectsAndSlotMapsParse() {
        #expect(RedisRedirect("MOVED 3999 127.0.0.1:6381") == .moved(slot: 3999, to: SocketAddressSpec(host: "127.0.0.1", port: 6381)))
        #expect(RedisRedirect("ASK 3999 ::1:6381") == .ask(slot: 3999, to: SocketAddressSpec(host: "::1", port: 6381)))
        #expect(RedisRedirect("MOVED 99999 127.0.0.1:6381") == nil)
        #expect(RedisRedirect("ERR wrong") == nil)
        let asked = SocketAddressSpec(host: "10.0.0.1", port: 7000)
        let reply = RedisReply.array([
            .array([.integer(0), .integer(8191), .array([.string(Array("10.0.0.1".utf8)), .integer(7000), .string([])])]),
            .array([.integer(8192), .integer(16383), .array([.string([]), .integer(7001)]), .array([.string(Array("10.0.0.3".utf8)), .integer(7003)])]),
        ])
        let map = RedisSlotMap.parse(reply, asked: asked)
        #expect(map?.node(for: 0) == asked && map?.node(for: 8191) == asked)
        // An empty host is the node asked; replicas are not used.
        #expect(map?.node(for: 16383) == SocketAddressSpec(host: "10.0.0.1", port: 7001))
        #expect(map?.nodes.count == 2)
        #expect(RedisSlotMap.parse(.array([.array([.integer(5), .integer(2), .array([])])]), asked: asked) == nil)
        // A MOVED slot goes to a new node appended at the end: the indices clients are cached
        // by stay valid.
        var moved = map!
        let third = SocketAddressSpec(host: "10.0.0.9", port: 7009)
        moved.assign(100, to: third)
        #expect(moved.nodeIndex(for: 100) == 2 && moved.nodes[2] == third)
        #expect(moved.nodeIndex(for: 0) == 0 && moved.nodeIndex(for: 16383) == 1)
        #expect(RedisSlotMap().nodeIndex(for: 5) == nil)
    }
}

/// When a worker reads a deployment's layout again: at once, then at most every interval, one
/// question at a time, and once more when something failed while a question was out.
@Suite struct TopologyRefreshTests {
    @Test func asksAtMostOncePerIntervalAndAgainAfterAStaleAnswer() {
        var r = TopologyRefresh(minInterval: .milliseconds(100))
        let t0 = NIODeadline.uptimeNanoseconds(1_000_000_000)
        #expect(r.wanted(now: t0) == .ask)
        // A failure while the question is out: asked again once answered, not before.
        #expect(r.wanted(now: t0 + .milliseconds(10)) == .none)
        #expect(r.answered(now: t0 + .milliseconds(20)) == .schedule(t0 + .milliseconds(100)))
        #expect(r.wanted(now: t0 + .milliseconds(30)) == .none)
        #expect(r.due(now: t0 + .milliseconds(100)) == .ask)
        #expect(r.answered(now: t0 + .milliseconds(110)) == .none)
        // Quiet, then a failure past the interval: asked at once.
        #expect(r.wanted(now: t0 + .milliseconds(300)) == .ask)
    }
}
