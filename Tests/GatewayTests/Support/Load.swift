import Foundation

/// Client threads sending requests over kept-alive connections until stopped, counting
/// answers `accept` calls good and everything else (statuses, errors, resets) as failures.
final class Load {
    private let stopped = LockedFlag()
    let served = LockedCounter()
    let failures = LockedCounter()
    private let threads: [Thread]

    init(port: Int, clients: Int, target: String, accept: @escaping @Sendable (RawClient.Response) -> Bool = { $0.status == 200 }) {
        let stopped = self.stopped, served = self.served, failures = self.failures
        threads = (0..<clients).map { _ in
            Thread {
                var client = try? RawClient(port: port)
                while !stopped.isSet {
                    do {
                        guard let c = client else { throw RawClient.Failure(description: "no client") }
                        if accept(try c.request("GET", target)) { served.add() } else { failures.add() }
                    } catch {
                        failures.add()
                        client = try? RawClient(port: port)
                    }
                }
            }
        }
        threads.forEach { $0.start() }
    }

    /// Stops the clients and waits for them.
    func stop() async throws {
        stopped.set()
        while threads.contains(where: { $0.isExecuting }) { try await Task.sleep(for: .milliseconds(20)) }
    }
}

/// Blocks the calling thread for `seconds`. For pauses between a client's writes in an async
/// test: a `Task.sleep` resumes only when a cooperative thread is free, which can take seconds
/// while other suites' blocking clients hold them all.
func pause(_ seconds: Double) {
    usleep(useconds_t(seconds * 1_000_000))
}

/// Asks `condition` until it holds or `seconds` pass, and says whether it held. For waiting on
/// the gateway's own tasks (probes, JWKS refetches): it sleeps with `Task.sleep`, giving the
/// cooperative thread back to those tasks, and allows for other suites holding the pool.
func eventually(within seconds: Double = 10, _ condition: () throws -> Bool) async rethrows -> Bool {
    let start = ContinuousClock.now
    while try !condition() {
        if ContinuousClock.now - start > .milliseconds(Int(seconds * 1000)) { return false }
        try? await Task.sleep(for: .milliseconds(50))
    }
    return true
}

/// Runs a blocking call on a thread of its own and awaits it, leaving the cooperative pool
/// free: needed when what answers the call itself runs as a task (the admin endpoints ask
/// the gateway actor), or a full pool would wait on itself until the client's timeout.
func offThePool<T: Sendable>(_ body: @escaping @Sendable () throws -> T) async throws -> T {
    try await withCheckedThrowingContinuation { continuation in
        Thread { continuation.resume(with: Result { try body() }) }.start()
    }
}
