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
        process = try launchServer(ProcessTests.binary, ["echo", "--host", "127.0.0.1", "--port", "\(port)"], port: port, name: "moongate echo")
    }

    func kill() {
        guard let p = process else { return }
        process = nil
        Foundation.kill(p.processIdentifier, SIGKILL)
        let deadline = Date().addingTimeInterval(5)
        while Date() < deadline, (try? RawClient(port: port, timeout: 0.2)) != nil { usleep(10_000) }
    }
}

/// Starts `executable` (a server of a test) with its output discarded and waits up to 10 s for
/// it to accept connections on the loopback `port`; `name` says who did not start.
func launchServer(_ executable: String, _ arguments: [String], port: Int, name: String) throws -> Process {
    let p = Process()
    p.executableURL = URL(fileURLWithPath: executable)
    p.arguments = arguments
    p.standardOutput = FileHandle.nullDevice
    p.standardError = FileHandle.nullDevice
    try p.run()
    let deadline = Date().addingTimeInterval(10)
    while Date() < deadline {
        if (try? RawClient(port: port, timeout: 0.2)) != nil {
            // Something answers there; it must be this process (not another that had the port).
            usleep(50_000)
            if p.isRunning { return p }
            break
        }
        if !p.isRunning { break }
        usleep(20_000)
    }
    kill(p.processIdentifier, SIGKILL)
    throw RawClient.Failure(description: "\(name) did not start on port \(port)")
}
