import Dispatch
import NIOConcurrencyHelpers
import NIOCore

/// A fixed set of ``SocketLoop``s, one thread each: the gateway's workers.
public final class SocketLoopGroup: EventLoopGroup, Sendable {
    /// The loops, in the order they were started.
    public let loops: [SocketLoop]
    private let counter = NIOLockedValueBox(0)

    /// Starts `count` loops named `name-0`, `name-1`, ...
    public init(count: Int, name: String = "worker") throws {
        precondition(count > 0, "a group needs a loop")
        var loops: [SocketLoop] = []
        do {
            for i in 0..<count { loops.append(try SocketLoop(name: "\(name)-\(i)")) }
        } catch {
            for loop in loops { loop.stop() }
            throw error
        }
        self.loops = loops
    }

    public func next() -> EventLoop {
        if let current = SocketLoop.current, loops.contains(where: { $0 === current }) { return current }
        let i = counter.withLockedValue { value in
            defer { value &+= 1 }
            return value
        }
        return loops[i % loops.count]
    }

    public func any() -> EventLoop {
        if let current = SocketLoop.current, loops.contains(where: { $0 === current }) { return current }
        return loops[0]
    }

    public func makeIterator() -> EventLoopIterator { EventLoopIterator(loops) }

    /// Stops every loop; sources still registered on them are closed.
    public func shutdownGracefully(queue: DispatchQueue, _ callback: @escaping @Sendable (Error?) -> Void) {
        let group = DispatchGroup()
        for loop in loops {
            group.enter()
            loop.shutdownGracefully(queue: queue) { _ in group.leave() }
        }
        group.notify(queue: queue) { callback(nil) }
    }
}
