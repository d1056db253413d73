import Dispatch
import NIOCore

/// An event loop whose clock moves only when told: `moongate test`'s gateway runs on it, so a
/// test's `harness.clock.advance` drives the data plane's timeouts, breakers and ejections as
/// it drives the scripts' `now()`. Work runs when `run()` is called, on the caller's thread
/// (the simulation is single-threaded); scheduled tasks fire once the clock reaches them.
public final class ManualLoop: EventLoop, @unchecked Sendable {
    private struct Timer {
        let deadline: NIODeadline
        let id: Int
        let fire: () -> Void
    }

    /// The loop's time: where the real clock was when it was made, plus what tests advanced.
    public private(set) var now: NIODeadline
    private var queue: [() -> Void] = []
    private var timers: [Timer] = []
    private var nextID = 0

    public init() {
        now = .now()
    }

    public var inEventLoop: Bool { true }

    public func execute(_ task: @escaping @Sendable () -> Void) {
        queue.append(task)
    }

    public func _executeIsolatedUnsafeUnchecked(_ task: @escaping () -> Void) {
        queue.append(task)
    }

    public func scheduleTask<T>(deadline: NIODeadline, _ task: @escaping @Sendable () throws -> T) -> Scheduled<T> {
        schedule(deadline: deadline, task)
    }

    public func scheduleTask<T>(in delay: TimeAmount, _ task: @escaping @Sendable () throws -> T) -> Scheduled<T> {
        schedule(deadline: now + delay, task)
    }

    public func _scheduleTaskIsolatedUnsafeUnchecked<T>(deadline: NIODeadline, _ task: @escaping () throws -> T) -> Scheduled<T> {
        schedule(deadline: deadline, task)
    }

    public func _scheduleTaskIsolatedUnsafeUnchecked<T>(in delay: TimeAmount, _ task: @escaping () throws -> T) -> Scheduled<T> {
        schedule(deadline: now + delay, task)
    }

    private func schedule<T>(deadline: NIODeadline, _ task: @escaping () throws -> T) -> Scheduled<T> {
        let promise = makePromise(of: T.self)
        nextID += 1
        let id = nextID
        timers.append(Timer(deadline: deadline, id: id) {
            do { promise.assumeIsolatedUnsafeUnchecked().succeed(try task()) } catch { promise.fail(error) }
        })
        return Scheduled(promise: promise) { [self] in
            guard let index = timers.firstIndex(where: { $0.id == id }) else { return }
            timers.remove(at: index)
            promise.fail(EventLoopError.cancelled)
        }
    }

    /// Runs queued work and the timers that are due, until nothing is left to run now.
    public func run() {
        while true {
            if !queue.isEmpty {
                let work = queue
                queue.removeAll()
                for task in work { task() }
                continue
            }
            // The earliest due timer (in the order set, for equal deadlines).
            guard let index = timers.indices.filter({ timers[$0].deadline <= now }).min(by: { (timers[$0].deadline, timers[$0].id) < (timers[$1].deadline, timers[$1].id) })
            else { return }
            timers.remove(at: index).fire()
        }
    }

    /// Moves the clock forward, firing what comes due on the way, in order.
    public func advance(by amount: TimeAmount) {
        let end = now + amount
        while let next = timers.filter({ $0.deadline <= end }).min(by: { ($0.deadline, $0.id) < ($1.deadline, $1.id) }) {
            if next.deadline > now { now = next.deadline }
            run()
        }
        now = end
        run()
    }

    public func preconditionInEventLoop(file: StaticString, line: UInt) {}
    public func preconditionNotInEventLoop(file: StaticString, line: UInt) {}

    public func shutdownGracefully(queue: DispatchQueue, _ callback: @escaping @Sendable (Error?) -> Void) {
        timers.removeAll()
        self.queue.removeAll()
        queue.async { callback(nil) }
    }

    public func next() -> EventLoop { self }
    public func any() -> EventLoop { self }
    public func makeIterator() -> EventLoopIterator { EventLoopIterator([self]) }
}

/// Where a worker reads the time: the system's monotonic clock, or a `ManualLoop`'s.
/// Read on every request: the loop is held unretained (the worker's `eventLoop` keeps it), so
/// reading the time takes no retain and release (as an enum payload did: 0.5% of a request).
struct WorkerClock {
    private let manual: Unmanaged<ManualLoop>?

    static let system = WorkerClock(manual: nil)

    /// `loop` must outlive the clock (the worker holds it as its event loop).
    static func manual(_ loop: ManualLoop) -> WorkerClock { WorkerClock(manual: .passUnretained(loop)) }

    var isManual: Bool { manual != nil }

    @inline(__always)
    func now() -> NIODeadline {
        guard let manual else { return .now() }
        return manual.takeUnretainedValue().now
    }
}
