import Dispatch
import NIOConcurrencyHelpers
import NIOCore

extension EventLoop {
    /// Runs `body` on the loop and returns what it returned, or nil when the loop has not
    /// answered within `timeout` (a loop stuck in a task, or one that has stopped and refuses
    /// work). For shutdown, which must not wait forever on one loop: the task may still run
    /// later, and its answer is then dropped.
    public func answer<T: Sendable>(within timeout: TimeAmount, _ body: @escaping @Sendable () throws -> T) async -> T? {
        let future = submit(body)
        return await withCheckedContinuation { (continuation: CheckedContinuation<T?, Never>) in
            let pending = NIOLockedValueBox(Optional(continuation))
            let finish: @Sendable (T?) -> Void = { value in
                let waiting: CheckedContinuation<T?, Never>? = pending.withLockedValue { slot in
                    defer { slot = nil }
                    return slot
                }
                waiting?.resume(returning: value)
            }
            future.whenComplete { result in finish(try? result.get()) }
            DispatchQueue.global().asyncAfter(deadline: .now() + .nanoseconds(Int(max(timeout.nanoseconds, 0)))) { finish(nil) }
        }
    }
}
