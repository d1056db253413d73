import Foundation

/// `moongate echo` as a child process on a free port: an upstream a test can kill (SIGKILL,
/// as a crash) and start again on the same port.
final class EchoProcess: @unchecked Sendable {
    let port: Int
    private var process: Process?

    init() throws {
        port = try RawClient.freePort()
        try start()
    }

    deinit { kill() }

    func start() throws {
        let p = Process()
        p.executableURL = URL(fileURLWithPath: ProcessTests.binary)
        p.arguments = ["echo", "--host", "127.0.0.1", "--port", "\(port)"]
        p.standardOutput = FileHandle.nullDevice
        p.standardError = FileHandle.nullDevice
        try p.run()
        process = p
        let deadline = Date().addingTimeInterval(10)
        while Date() < deadline {
            if (try? RawClient(port: port, timeout: 0.2)) != nil { return }
            usleep(20_000)
        }
        throw RawClient.Failure(description: "moongate echo did not start on port \(port)")
    }

    func kill() {
        guard let p = process else { return }
        process = nil
        Foundation.kill(p.processIdentifier, SIGKILL)
        let deadline = Date().addingTimeInterval(5)
        while Date() < deadline, (try? RawClient(port: port, timeout: 0.2)) != nil { usleep(10_000) }
    }
}
