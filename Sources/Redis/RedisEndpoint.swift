import Config
import Logging
import NIOCore

/// One worker's way to a Redis deployment: a command goes to the server that holds its key
/// (its first key, `RedisCommand.slot`). Loop-confined, like the connections under it.
public protocol RedisEndpoint: AnyObject {
    /// Sends `command`; `completion` runs on this loop, possibly before `send` returns.
    func send(_ command: RedisCommand, completion: @escaping RedisClient.Completion)
    /// Closes every connection; later commands fail at once.
    func close()
    /// Counts summed over the deployment's connections since start.
    var stats: RedisClient.Stats { get }
}

extension RedisClient: RedisEndpoint {}

extension RedisClient.Stats {
    public mutating func add(_ other: RedisClient.Stats) {
        commands += other.commands
        timeouts += other.timeouts
        failures += other.failures
        rejected += other.rejected
        connects += other.connects
    }
}

/// Makes the endpoint `server`'s topology calls for, on `eventLoop`.
public enum RedisEndpoints {
    public static func make(server: RedisServer, password: String?, tls: RedisTLS?, eventLoop: EventLoop, logger: Logger) -> any RedisEndpoint {
        switch server.topology {
        case .single:
            return RedisClient(
                server: server, address: server.address, username: server.username, password: password, database: server.database, tls: tls,
                eventLoop: eventLoop, logger: logger)
        case .cluster(let seeds):
            return RedisClusterClient(server: server, seeds: seeds, password: password, tls: tls, eventLoop: eventLoop, logger: logger)
        case .sentinel(let sentinel):
            return RedisSentinelClient(server: server, sentinel: sentinel, password: password, tls: tls, eventLoop: eventLoop, logger: logger)
        }
    }
}

/// When to read a deployment's layout again: at once when a command fails or is redirected,
/// but at most once per `minInterval`, one question at a time. A value, driven by its client.
struct TopologyRefresh {
    let minInterval: TimeAmount
    private(set) var asking = false
    private var last: NIODeadline?
    private var scheduled = false
    /// Wanted again while a question was out: its answer may predate the change.
    private var again = false

    init(minInterval: TimeAmount) {
        self.minInterval = minInterval
    }

    enum Action: Equatable {
        /// Ask now.
        case ask
        /// Ask at this time (nothing is scheduled yet).
        case schedule(NIODeadline)
        case none
    }

    /// Something suggests the layout changed.
    mutating func wanted(now: NIODeadline) -> Action {
        if asking {
            again = true
            return .none
        }
        guard !scheduled else { return .none }
        if let last, now < last + minInterval {
            scheduled = true
            return .schedule(last + minInterval)
        }
        asking = true
        last = now
        return .ask
    }

    /// The scheduled time came.
    mutating func due(now: NIODeadline) -> Action {
        scheduled = false
        return wanted(now: now)
    }

    /// The question was answered (or every server failed to).
    mutating func answered(now: NIODeadline) -> Action {
        asking = false
        guard again else { return .none }
        again = false
        return wanted(now: now)
    }
}

/// Drives a client's `TopologyRefresh` on its loop: `wanted()` when something suggests the
/// layout changed, `answered()` when a question ends; `ask` runs when a question is due, now
/// or once the minimum interval has passed.
final class TopologyRefresher {
    private var state: TopologyRefresh
    private let eventLoop: EventLoop
    private let ask: () -> Void

    init(minInterval: TimeAmount, eventLoop: EventLoop, ask: @escaping () -> Void) {
        state = TopologyRefresh(minInterval: minInterval)
        self.eventLoop = eventLoop
        self.ask = ask
    }

    func wanted() { act(state.wanted(now: .now())) }

    func answered() { act(state.answered(now: .now())) }

    private func act(_ action: TopologyRefresh.Action) {
        switch action {
        case .none:
            return
        case .schedule(let at):
            eventLoop.assumeIsolatedUnsafeUnchecked().scheduleTask(deadline: at) { [self] in
                act(state.due(now: .now()))
            }
        case .ask:
            ask()
        }
    }
}
