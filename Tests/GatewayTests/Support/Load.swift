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
