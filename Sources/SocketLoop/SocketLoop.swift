import CEpoll
import Dispatch
import Glibc
import NIOConcurrencyHelpers
import NIOCore

/// Something registered with a ``SocketLoop`` that wants its descriptor's readiness.
///
/// The loop holds sources strongly while they are registered, so a connection lives as long
/// as its socket does, whoever else forgets it.
public protocol SocketLoopSource: AnyObject {
    /// The descriptor became ready; `events` holds the `EPOLL*` bits.
    func ready(events: UInt32)
}

/// One thread running one `epoll` instance: the data plane's event loop.
///
/// It is an `EventLoop`, so futures, promises, `scheduleTask` and `NIOLoopBound` work on it as
/// on NIO's own loops, but its sockets are plain descriptors read and written with
/// `read`/`sendmsg`, with no `Channel` and no pipeline around them. Measured here (README,
/// "What bounds the proxy"), a NIO socket channel costs about 100 reference-count operations
/// and 20 dynamic exclusivity checks per proxied request in its own bookkeeping (lifecycle
/// state copies on every `isOpen`, `NIOAny` boxing, registration enums), about half of the
/// gateway's user time; the I/O itself is the same two reads and two writes.
///
/// NIO channels cannot be registered here (bootstraps need NIO's own loops): what needs them
/// (TLS, the admin listener, HTTP fetches) runs on NIO loops and hops here through `execute`.
public final class SocketLoop: EventLoop, @unchecked Sendable {
    // @unchecked Sendable: every stored property below the lock's group is touched only on the
    // loop's thread (checked by `preconditionInEventLoop` where it matters); `remote`,
    // `wakeArmed`, `stopRequested`, `stopped` and `shutdownCallbacks` only under `lock`.

    /// A label for logs and thread names.
    public let name: String
    private let epfd: Int32
    private let wakeFD: Int32
    private var thread = pthread_t()
    private let started = ConditionLock(value: 0)

    private let lock = NIOLock()
    private var remote: [() -> Void] = []
    private var wakeArmed = false
    private var stopRequested = false
    private var stopped = false
    private var shutdownCallbacks: [(DispatchQueue, @Sendable (Error?) -> Void)] = []

    private var local = CircularBuffer<() -> Void>(initialCapacity: 64)
    private var timers = TimerHeap()
    private var sources: [SourceSlot] = []
    private var freeSlots: [Int] = []
    private var running = true
    /// Whether the wake-up descriptor fired: only then can `remote` hold tasks (a task is
    /// queued there and the descriptor written under one lock), so quiet turns take no lock.
    private var woken = true
    /// The buffer every socket on this loop reads into; handed to the reader and taken back,
    /// so it is reused unless the reader kept (a slice of) it.
    /// Optional so a reader can move it out and back (`take()`) without retain or release.
    var receiveBuffer: ByteBuffer? = ByteBufferAllocator().buffer(capacity: TCPConnection.readSize)

    private struct SourceSlot {
        var source: SocketLoopSource?
        var generation: UInt32
    }

    /// Identifies a registration: the slot and its generation, so an event for a descriptor
    /// closed (and maybe reused) earlier in the same `epoll_wait` batch is never misdelivered.
    public struct Registration: Equatable, Sendable {
        let slot: Int
        let generation: UInt32
        let fd: Int32
        var token: UInt64 { UInt64(generation) << 32 | UInt64(slot + 1) }
    }

    /// Starts the loop's thread.
    public init(name: String = "SocketLoop") throws {
        self.name = name
        epfd = epoll_create1(Int32(EPOLL_CLOEXEC))
        guard epfd >= 0 else { throw SocketError.system("epoll_create1", cepoll_errno()) }
        wakeFD = eventfd(0, Int32(EFD_NONBLOCK | EFD_CLOEXEC))
        guard wakeFD >= 0 else {
            let e = cepoll_errno()
            Glibc.close(epfd)
            throw SocketError.system("eventfd", e)
        }
        // Token 0 is the wake-up descriptor.
        _ = cepoll_ctl(epfd, EPOLL_CTL_ADD, wakeFD, CEPOLL_IN, 0)
        let box = Unmanaged.passRetained(self).toOpaque()
        var created = pthread_t()
        let rc = pthread_create(&created, nil, { arg in
            let loop = Unmanaged<SocketLoop>.fromOpaque(arg!).takeRetainedValue()
            loop.run()
            return nil
        }, box)
        guard rc == 0 else {
            Unmanaged<SocketLoop>.fromOpaque(box).release()
            Glibc.close(wakeFD)
            Glibc.close(epfd)
            throw SocketError.system("pthread_create", rc)
        }
        started.lock(whenValue: 1)
        started.unlock()
        pthread_detach(created)
    }

    // MARK: EventLoop

    /// The loop running on this thread, if it is a `SocketLoop`'s (NIO's
    /// `MultiThreadedEventLoopGroup.currentEventLoop` knows only NIO's own loops).
    public static var current: SocketLoop? {
        guard let pointer = pthread_getspecific(currentKey) else { return nil }
        return Unmanaged<SocketLoop>.fromOpaque(pointer).takeUnretainedValue()
    }

    private static let currentKey: pthread_key_t = {
        var key = pthread_key_t()
        precondition(pthread_key_create(&key, nil) == 0, "pthread_key_create")
        return key
    }()

    /// Whether the caller runs on this loop's thread. Asked of the thread's own key, not by
    /// comparing `pthread_t`s: once the loop's thread has ended, a new thread may be given the
    /// same `pthread_t`, and would pass for the loop (and queue work nobody runs).
    public var inEventLoop: Bool { pthread_getspecific(Self.currentKey) == Unmanaged.passUnretained(self).toOpaque() }

    public func execute(_ task: @escaping @Sendable () -> Void) {
        enqueue(task)
    }

    /// Runs `task` on the loop; from the loop itself it is queued without a lock or syscall.
    public func enqueue(_ task: @escaping () -> Void) {
        if inEventLoop {
            local.append(task)
            return
        }
        // The wake-up write happens under the lock: the loop sets `stopped` under it before it
        // closes the descriptor, so no write can reach a number that another file now holds.
        let refused: Bool = lock.withLock {
            if stopped { return true }
            remote.append(task)
            if !wakeArmed {
                wakeArmed = true
                wakeUp()
            }
            return false
        }
        if refused { Self.refusedTasks.withLockedValue { $0 += 1 } }
    }

    /// Tasks refused because their loop had stopped (as NIO, which refuses them too), since
    /// the process started.
    public static var refusedAfterStop: Int { refusedTasks.withLockedValue { $0 } }
    private static let refusedTasks = NIOLockedValueBox(0)

    /// Whether the loop has stopped (its thread has ended); it then refuses all work.
    public var isStopped: Bool { lock.withLock { stopped } }

    public func _executeIsolatedUnsafeUnchecked(_ task: @escaping () -> Void) {
        enqueue(task)
    }

    public func scheduleTask<T>(deadline: NIODeadline, _ task: @escaping @Sendable () throws -> T) -> Scheduled<T> {
        schedule(deadline: deadline, task)
    }

    public func scheduleTask<T>(in delay: TimeAmount, _ task: @escaping @Sendable () throws -> T) -> Scheduled<T> {
        schedule(deadline: .now() + delay, task)
    }

    public func _scheduleTaskIsolatedUnsafeUnchecked<T>(deadline: NIODeadline, _ task: @escaping () throws -> T) -> Scheduled<T> {
        schedule(deadline: deadline, task)
    }

    public func _scheduleTaskIsolatedUnsafeUnchecked<T>(in delay: TimeAmount, _ task: @escaping () throws -> T) -> Scheduled<T> {
        schedule(deadline: .now() + delay, task)
    }

    private func schedule<T>(deadline: NIODeadline, _ task: @escaping () throws -> T) -> Scheduled<T> {
        let promise = makePromise(of: T.self)
        // Only a caller off the loop can find it stopped; on the loop (every request's timers)
        // no lock is taken.
        if !inEventLoop, isStopped {
            promise.fail(EventLoopError.shutdown)
            return Scheduled(promise: promise) {}
        }
        let timer = TimerHeap.Timer(deadline: deadline) {
            do { promise.assumeIsolatedUnsafeUnchecked().succeed(try task()) } catch { promise.fail(error) }
        }
        let bound = LoopOnly(timer)
        let scheduled = Scheduled(promise: promise) { [self] in
            // Cancellation may come from any thread; the heap is the loop's.
            execute { [self] in
                if timers.remove(bound.value) { promise.fail(EventLoopError.cancelled) }
            }
        }
        execute { [self] in timers.insert(bound.value) }
        return scheduled
    }

    public func preconditionInEventLoop(file: StaticString, line: UInt) {
        precondition(inEventLoop, "not on \(name)", file: file, line: line)
    }

    public func preconditionNotInEventLoop(file: StaticString, line: UInt) {
        precondition(!inEventLoop, "on \(name)", file: file, line: line)
    }

    // MARK: EventLoopGroup

    public func next() -> EventLoop { self }
    public func any() -> EventLoop { self }
    public func makeIterator() -> EventLoopIterator { EventLoopIterator([self]) }

    /// Stops the loop after the tasks already queued; sources still registered are closed.
    public func shutdownGracefully(queue: DispatchQueue, _ callback: @escaping @Sendable (Error?) -> Void) {
        let alreadyStopped: Bool = lock.withLock {
            if stopped { return true }
            shutdownCallbacks.append((queue, callback))
            stopRequested = true
            return false
        }
        if alreadyStopped {
            queue.async { callback(nil) }
            return
        }
        execute { [self] in running = false }
    }

    /// Stops the loop and waits for its thread.
    public func stop() {
        if inEventLoop {
            running = false
            return
        }
        let done = ConditionLock(value: 0)
        shutdownGracefully(queue: .global()) { _ in
            done.lock()
            done.unlock(withValue: 1)
        }
        done.lock(whenValue: 1)
        done.unlock()
    }

    // MARK: loop-thread timers

    /// A timer set with ``setTimer(at:_:)``.
    public struct TimerHandle {
        let timer: TimerHeap.Timer
        /// When it fires.
        public var deadline: NIODeadline { timer.deadline }
    }

    /// Runs `task` on the loop at `deadline`. From the loop only; cheaper than `scheduleTask`
    /// (no promise, no `Scheduled`), for timeouts armed and cancelled on every request.
    public func setTimer(at deadline: NIODeadline, _ task: @escaping () -> Void) -> TimerHandle {
        preconditionInEventLoop()
        let timer = TimerHeap.Timer(deadline: deadline, task)
        timers.insert(timer)
        return TimerHandle(timer: timer)
    }

    /// Cancels a timer that has not fired; returns whether it was still waiting.
    @discardableResult
    public func cancelTimer(_ handle: TimerHandle) -> Bool {
        preconditionInEventLoop()
        return timers.remove(handle.timer)
    }

    /// Timers waiting (tests).
    public var timerCount: Int { timers.count }

    // MARK: registration

    /// Registers `fd` for `events` (`CEPOLL_IN`, `CEPOLL_OUT`); the loop holds `source` until
    /// ``close(_:)``.
    public func register(_ fd: Int32, events: UInt32, source: SocketLoopSource) throws(SocketError) -> Registration {
        preconditionInEventLoop()
        let slot: Int
        if let free = freeSlots.popLast() {
            slot = free
            sources[slot].source = source
        } else {
            slot = sources.count
            sources.append(SourceSlot(source: source, generation: 0))
        }
        let registration = Registration(slot: slot, generation: sources[slot].generation, fd: fd)
        guard cepoll_ctl(epfd, EPOLL_CTL_ADD, fd, events, registration.token) == 0 else {
            let e = cepoll_errno()
            release(slot)
            throw .system("epoll_ctl(ADD)", e)
        }
        return registration
    }

    /// Changes what `registration` waits for.
    public func reregister(_ registration: Registration, events: UInt32) {
        _ = cepoll_ctl(epfd, EPOLL_CTL_MOD, registration.fd, events, registration.token)
    }

    /// Stops watching the descriptor, lets go of its source and closes the descriptor.
    public func close(_ registration: Registration) {
        preconditionInEventLoop()
        _ = cepoll_ctl(epfd, EPOLL_CTL_DEL, registration.fd, 0, 0)
        if sources[registration.slot].generation == registration.generation { release(registration.slot) }
        Glibc.close(registration.fd)
    }

    private func release(_ slot: Int) {
        sources[slot].source = nil
        sources[slot].generation &+= 1
        freeSlots.append(slot)
    }

    /// How many sources are registered (tests, status).
    public var registeredCount: Int { sources.count - freeSlots.count }

    // MARK: the loop

    private func wakeUp() {
        var one: UInt64 = 1
        _ = Glibc.write(wakeFD, &one, 8)
    }

    private func run() {
        thread = pthread_self()
        // Named for `top -H` and profilers (the kernel keeps 15 bytes).
        cepoll_name_thread(String(name.utf8.prefix(15))!)
        // Unretained: the thread's own reference (taken in init) outlives this.
        pthread_setspecific(Self.currentKey, Unmanaged.passUnretained(self).toOpaque())
        started.lock()
        started.unlock(withValue: 1)
        let capacity = 256
        let events = UnsafeMutablePointer<epoll_event>.allocate(capacity: capacity)
        defer { events.deallocate() }
        while running {
            runTasks()
            if !running { break }
            let timeout: Int32
            if !local.isEmpty {
                timeout = 0
            } else if let next = timers.nextDeadline {
                let ns = max((next - .now()).nanoseconds, 0)
                // Rounded up: a timer never fires early.
                timeout = Int32(clamping: (ns + 999_999) / 1_000_000)
            } else {
                timeout = -1
            }
            let n = epoll_wait(epfd, events, Int32(capacity), timeout)
            if n > 0 {
                for i in 0..<Int(n) {
                    let token = events[i].data.u64
                    if token == 0 {
                        var value: UInt64 = 0
                        _ = Glibc.read(wakeFD, &value, 8)
                        woken = true
                        continue
                    }
                    let slot = Int(token & 0xFFFF_FFFF) - 1
                    guard slot < sources.count, sources[slot].generation == UInt32(token >> 32),
                        let source = sources[slot].source
                    else { continue }
                    source.ready(events: events[i].events)
                }
            }
            if !timers.isEmpty { fireTimers() }
        }
        // Whatever is still registered is closed with the loop.
        for slot in sources.indices {
            if let source = sources[slot].source as? SocketLoopClosable { source.closeForShutdown() }
        }
        woken = true
        runTasks()
        let callbacks: [(DispatchQueue, @Sendable (Error?) -> Void)] = lock.withLock {
            stopped = true
            defer { shutdownCallbacks = [] }
            return shutdownCallbacks
        }
        Glibc.close(wakeFD)
        Glibc.close(epfd)
        for (queue, callback) in callbacks { queue.async { callback(nil) } }
    }

    private func runTasks() {
        // Tasks queued by these tasks wait for the next turn, after I/O: a task that re-queues
        // itself cannot starve the sockets.
        var budget = local.count
        if woken {
            woken = false
            let others: [() -> Void] = lock.withLock {
                wakeArmed = false
                defer { remote.removeAll(keepingCapacity: true) }
                return remote
            }
            for task in others { task() }
        }
        while budget > 0, let task = local.popFirst() {
            budget -= 1
            task()
        }
    }

    private func fireTimers() {
        let now = NIODeadline.now()
        while let timer = timers.popDue(now: now) { timer.fire() }
    }
}

extension SocketLoop: CustomStringConvertible {
    public var description: String { "SocketLoop(\(name))" }
}

/// Sources the loop closes when it stops.
protocol SocketLoopClosable {
    func closeForShutdown()
}

/// Socket failures: what failed and its `errno`.
public enum SocketError: Error, Equatable, CustomStringConvertible {
    case system(String, Int32)
    case timeout
    case closed
    /// A TLS handshake or record failed (OpenSSL's reason).
    case tls(String)

    public var description: String {
        switch self {
        case .system(let call, let e): return "\(call): \(String(cString: strerror(e))) (errno \(e))"
        case .timeout: return "timed out"
        case .closed: return "connection closed"
        case .tls(let reason): return "TLS: \(reason)"
        }
    }

    /// The `errno`, if the system said no.
    public var errno: Int32? {
        if case .system(_, let e) = self { return e }
        return nil
    }
}

/// Carries a value that is used on the loop only into a `@Sendable` closure that takes it
/// there: the timer of a `scheduleTask` called from any thread (`NIOLoopBound` must be made on
/// the loop, and its sending form refuses a value holding the caller's non-`Sendable` task),
/// and the generic option values of `SocketChannel` (not `Sendable` in NIO's signatures).
struct LoopOnly<T>: @unchecked Sendable {
    let value: T
    init(_ value: T) { self.value = value }
}
