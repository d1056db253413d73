#if canImport(Glibc)
import Glibc
#endif
import Config
import FoundationEssentials
import Synchronization

/// Control-plane CPU work (reading, validating and compiling a configuration) on a thread of
/// its own at a lower scheduling priority (nice 5). The workers keep a core each; when this
/// work lands on one, the kernel lets the worker's requests go first, so applying a large
/// configuration adds little to the latency of requests in flight (scripts/bench --fleet).
/// Not lower: with every worker busy, nice 5 still gets about a quarter of a core, and a change
/// made during an incident (blocking an abusive client, say) must not wait for the load to end.
enum BackgroundWork {
    /// CPU time spent in `run` bodies, summed (what an apply costs, whatever the wall clock says
    /// while it waits behind the workers).
    final class Meter: Sendable {
        private let nanoseconds = Atomic<Int>(0)
        var milliseconds: Int { nanoseconds.load(ordering: .relaxed) / 1_000_000 }
        func add(_ ns: Int) { nanoseconds.add(ns, ordering: .relaxed) }
    }

    static func run<T: Sendable>(meter: Meter? = nil, _ body: @escaping @Sendable () throws -> T) async throws -> T {
        try await withCheckedThrowingContinuation { continuation in
            // Compiling scripts and walking deep documents want more than a secondary
            // thread's default stack.
            BackgroundThread.start(name: "moongate-background-work", stackSize: 8 << 20) {
                #if os(Linux)
                // Linux keeps a nice value per thread: 0 is this thread, not the process.
                _ = setpriority(__priority_which_t(PRIO_PROCESS.rawValue), 0, 5)
                #endif
                let result = Result { try body() }
                var cpu = timespec()
                if let meter, clock_gettime(CLOCK_THREAD_CPUTIME_ID, &cpu) == 0 { meter.add(cpu.tv_sec * 1_000_000_000 + cpu.tv_nsec) }
                continuation.resume(with: result)
            }
        }
    }
}
