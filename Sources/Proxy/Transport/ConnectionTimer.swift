import NIOCore
import SocketLoop

/// A connection's one timer. On the gateway's `SocketLoop` it is a loop-thread timer (one
/// small object; `scheduleTask` adds a promise, a `Scheduled` and a cancel closure, about
/// 150 bytes that every idle kept-alive connection held); elsewhere (the `moongate test`
/// harness's embedded loop, NIO loops in tests) a scheduled task.
struct ConnectionTimer {
    private enum Armed {
        case none
        case loop(SocketLoop, SocketLoop.TimerHandle)
        case task(Scheduled<Void>)
    }

    private var armed = Armed.none
    /// When the armed timer fires (`distantFuture` when none is).
    private(set) var deadline = NIODeadline.distantFuture

    var isArmed: Bool {
        if case .none = armed { return false }
        return true
    }

    /// Arms the timer for `deadline` on `loop` (`socketLoop` is the same loop when it is one).
    mutating func arm(at deadline: NIODeadline, loop: EventLoop, socketLoop: SocketLoop?, _ fire: @escaping () -> Void) {
        cancel()
        self.deadline = deadline
        if let socketLoop {
            armed = .loop(socketLoop, socketLoop.setTimer(at: deadline, fire))
        } else {
            armed = .task(loop.assumeIsolatedUnsafeUnchecked().scheduleTask(deadline: deadline, fire))
        }
    }

    /// Forgets the timer that just fired.
    mutating func fired() {
        armed = .none
        deadline = .distantFuture
    }

    mutating func cancel() {
        switch armed {
        case .none: return
        case .loop(let loop, let handle): loop.cancelTimer(handle)
        case .task(let scheduled): scheduled.cancel()
        }
        armed = .none
        deadline = .distantFuture
    }
}
