import Foundation
import Redis
import TestSupport

/// A real `redis-server` for tests, on a free loopback port, that a test may kill and start
/// again on the same port. Debian's `redis-server` package (scripts/setup installs it).
public final class RedisProcess: @unchecked Sendable {
    public let port: Int
    private let password: String?
    private let lock = NSLock()
    private var process: Process?

    public init(password: String? = nil) throws {
        self.port = try freeLoopbackPort()
        self.password = password
        try start()
    }

    deinit {
        kill()
    }

    public static let executable = ["/usr/bin/redis-server", "/usr/local/bin/redis-server"].first {
        FileManager.default.isExecutableFile(atPath: $0)
    }

    /// Starts the server (again) and waits until it answers.
    public func start() throws {
        guard let executable = Self.executable else { throw RedisError.unavailable("redis-server is not installed (scripts/setup installs it)") }
        let p = Process()
        p.executableURL = URL(fileURLWithPath: executable)
        var args = ["--port", "\(port)", "--bind", "127.0.0.1", "--save", "", "--appendonly", "no", "--loglevel", "warning"]
        if let password { args += ["--requirepass", password] }
        p.arguments = args
        p.standardOutput = FileHandle.nullDevice
        p.standardError = FileHandle.nullDevice
        try p.run()
        lock.withLock { process = p }
        let deadline = Date().addingTimeInterval(10)
        while Date() < deadline {
            if (try? BlockingRedis(host: "127.0.0.1", port: port, timeoutSeconds: 0.2)) != nil { return }
            usleep(20_000)
        }
        throw RedisError.unavailable("redis-server did not start on port \(port)")
    }

    /// Kills the server at once (SIGKILL: no goodbye to its clients), and returns once its
    /// port refuses connections. (Not `Process.waitUntilExit`, which can wait forever for a
    /// run loop off the main thread.)
    public func kill() {
        guard let p = lock.withLock({ let p = process; process = nil; return p }) else { return }
        Foundation.kill(p.processIdentifier, SIGKILL)
        let deadline = Date().addingTimeInterval(5)
        while Date() < deadline, (try? BlockingRedis(host: "127.0.0.1", port: port, timeoutSeconds: 0.2)) != nil { usleep(10_000) }
    }

    /// A blocking connection, authenticated if the server has a password.
    public func connection() throws -> BlockingRedis {
        let c = try BlockingRedis(host: "127.0.0.1", port: port)
        if let password { _ = try c.send(RedisCommand("AUTH", password)) }
        return c
    }
}
