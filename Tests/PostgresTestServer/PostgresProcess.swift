import Foundation
import TestSupport

/// A real PostgreSQL server for tests: Debian's `postgresql` package (scripts/setup installs
/// it), a new cluster in a temporary folder on a free loopback port, trust authentication for
/// the user `moongate`. PostgreSQL refuses to run as root, so under root (CI) the cluster
/// belongs to the `postgres` user the package creates and the server runs as that user.
/// A test may stop it the hard way and start it again on the same port and data.
public final class PostgresProcess: @unchecked Sendable {
    public let port: Int
    public let directory: String
    public let user = "moongate"
    public let database = "postgres"
    private let bin: String
    private let lock = NSLock()
    private var process: Process?

    public struct Unavailable: Error, CustomStringConvertible {
        public let description: String
    }

    public init() throws {
        guard let bin = Self.binDirectory else { throw Unavailable(description: "PostgreSQL is not installed (scripts/setup --tests installs it)") }
        self.bin = bin
        port = try freeLoopbackPort()
        directory = NSTemporaryDirectory() + "moongate-pg-\(getpid())-\(port)"
        try FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true)
        try Self.ownByServerUser(directory)
        try run(["\(bin)/initdb", "-D", directory + "/data", "-U", user, "--auth=trust", "-E", "UTF8", "--no-sync", "-N"])
        try start()
    }

    deinit {
        kill()
        try? FileManager.default.removeItem(atPath: directory)
    }

    /// `postgres://moongate@127.0.0.1:<port>/postgres`
    public var url: String { "postgres://\(user)@127.0.0.1:\(port)/\(database)" }

    public static let binDirectory: String? = {
        let root = "/usr/lib/postgresql"
        let versions = ((try? FileManager.default.contentsOfDirectory(atPath: root)) ?? []).compactMap(Int.init).sorted()
        return versions.last.map { "\(root)/\($0)/bin" }.flatMap { FileManager.default.isExecutableFile(atPath: $0 + "/postgres") ? $0 : nil }
    }()

    /// Starts the server (again) and waits until it accepts connections.
    public func start() throws {
        let p = Process()
        let (executable, arguments) = Self.asServerUser([
            "\(bin)/postgres", "-D", directory + "/data", "-p", "\(port)", "-c", "listen_addresses=127.0.0.1", "-k", directory,
            // No fsync (the OS keeps what was written through a kill), but commits reach the
            // WAL before they are acknowledged, as in production.
            "-c", "fsync=off", "-c", "full_page_writes=off", "-c", "max_connections=100",
        ])
        p.executableURL = URL(fileURLWithPath: executable)
        p.arguments = arguments
        p.standardOutput = FileHandle.nullDevice
        p.standardError = FileHandle(forWritingAtPath: "/dev/null")
        try p.run()
        lock.withLock { process = p }
        let deadline = Date().addingTimeInterval(20)
        while Date() < deadline {
            if ready() { return }
            usleep(50_000)
        }
        throw Unavailable(description: "postgres did not start on port \(port)")
    }

    /// Stops the server at once (SIGQUIT: an immediate shutdown, no checkpoint, clients cut
    /// off as in a crash) and returns once it has exited.
    public func kill() {
        guard let p = lock.withLock({ let p = process; process = nil; return p }) else { return }
        Foundation.kill(p.processIdentifier, SIGQUIT)
        // The server removes its lock file last, once its children are gone: then the same
        // data folder and port can start again.
        let deadline = Date().addingTimeInterval(10)
        while Date() < deadline, FileManager.default.fileExists(atPath: directory + "/data/postmaster.pid") { usleep(20_000) }
    }

    /// Makes these users log in over TCP with a password checked by `method` (`scram-sha-256`
    /// or `md5`); everyone else stays on trust.
    public func requirePasswords(_ methods: [String: String]) throws {
        let hba = directory + "/data/pg_hba.conf"
        let lines = methods.map { "host all \($0.key) 127.0.0.1/32 \($0.value)" }.sorted()
        let trust = "local all all trust\nhost all all 127.0.0.1/32 trust\nhost all all ::1/128 trust\n"
        try (lines.joined(separator: "\n") + "\n" + trust).write(toFile: hba, atomically: false, encoding: .utf8)
        _ = try psql("SELECT pg_reload_conf()")
        usleep(200_000)
    }

    /// Runs SQL through `psql` (for tests that write to the store behind the gateways' back).
    public func psql(_ sql: String) throws -> String {
        try run(["\(bin)/psql", "-h", "127.0.0.1", "-p", "\(port)", "-U", user, "-d", database, "-v", "ON_ERROR_STOP=1", "-tAc", sql], asServer: false)
    }

    private func ready() -> Bool {
        (try? run(["\(bin)/pg_isready", "-q", "-h", "127.0.0.1", "-p", "\(port)", "-t", "1"], asServer: false)) != nil
    }

    @discardableResult
    private func run(_ command: [String], asServer: Bool = true) throws -> String {
        let (executable, arguments) = asServer ? Self.asServerUser(command) : (command[0], Array(command.dropFirst()))
        let (status, text) = try runTool(executable, arguments)
        guard status == 0 else { throw Unavailable(description: "\(command[0]) failed: \(text)") }
        return text
    }

    /// Under root, `command` as the `postgres` user (setpriv execs: no process in between, so
    /// signals reach the server itself).
    private static func asServerUser(_ command: [String]) -> (String, [String]) {
        guard getuid() == 0 else { return (command[0], Array(command.dropFirst())) }
        return ("/usr/bin/setpriv", ["--reuid=postgres", "--regid=postgres", "--clear-groups", "--"] + command)
    }

    private static func ownByServerUser(_ path: String) throws {
        guard getuid() == 0 else { return }
        guard let user = getpwnam("postgres") else { throw Unavailable(description: "no postgres user (Debian's postgresql package creates it)") }
        guard chown(path, user.pointee.pw_uid, user.pointee.pw_gid) == 0 else { throw Unavailable(description: "cannot chown \(path)") }
    }
}
