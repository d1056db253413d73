import ArgumentParser
import Config
import FoundationEssentials
import Glibc
import Harness

extension Moongate {
    struct Test: AsyncParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Run the policies' *_test.lua files, in-process: no server, no Redis, no real clock.",
            discussion: """
                Each test file runs against the gateway as its config describes it (routes, policies, \
                sandbox, budgets), simulated without sockets: harness.request{...} sends a request \
                through it, harness.upstream(name, fn) answers for an upstream, harness.clock moves time. \
                See docs/testing.md.
                """)

        @Argument(help: "Test files or folders (searched for *_test.lua). Default: the config's scripts directory.")
        var paths: [String] = []

        @Option(name: .shortAndLong, help: "The gateway YAML file. Default: the nearest gateway.yaml above the first path.")
        var config: String?

        @Option(help: "Run only the tests whose full name contains this text.")
        var filter: String?

        @Option(help: "Also write a JUnit XML report to this file.")
        var junit: String?

        @Flag(help: "Report in TAP (version 13) instead of text.")
        var tap = false

        @Flag(help: "Print each policy script's line coverage.")
        var coverage = false

        @Option(help: "Keep the Redis stores' buckets in this real redis-server (host:port) instead of in memory.")
        var redis: String?

        @Flag(help: "Run again whenever a script, test or the config changes.")
        var watch = false

        func run() async throws {
            let configPath = try resolveConfig()
            var ok = runOnce(configPath)
            guard watch else {
                if !ok { throw ExitCode(1) }
                return
            }
            while true {
                let directories = [(try? ConfigLoader.load(path: configPath).scripts.directory)].compactMap { $0 } + paths
                let watcher = try FileWatcher(paths: [configPath], directories: directories.filter { FileManager.default.fileExists(atPath: $0) })
                print("watching for changes (Ctrl-C stops)")
                fflush(nil)
                for await _ in watcher.changes { break }
                watcher.stop()
                print("\nchanged: running again")
                ok = runOnce(configPath)
            }
        }

        /// One run; false if anything failed.
        func runOnce(_ configPath: String) -> Bool {
            let config: GatewayConfig
            do {
                config = try ConfigLoader.load(path: configPath)
            } catch {
                StandardError.write("\(error)\n")
                return false
            }
            let files = TestRunner.discover(paths.isEmpty ? [config.scripts.directory] : paths)
            let runner: TestRunner
            do {
                var address: SocketAddressSpec?
                if let redis {
                    guard let a = SocketAddressSpec(parsing: redis) else { throw ValidationError("--redis: expected host:port, got \(redis)") }
                    address = a
                }
                runner = try TestRunner.forGateway(config: config, redis: address, coverage: coverage)
            } catch {
                StandardError.write("\(configPath): \(error)\n")
                return false
            }
            let results = runner.run(files, filter: filter)
            print(tap ? TestReport.tap(results) : TestReport.text(results), terminator: "")
            if let junit {
                do {
                    try TestReport.junit(results).write(toFile: junit, atomically: true, encoding: .utf8)
                } catch {
                    StandardError.write("cannot write \(junit): \(error)\n")
                    return false
                }
            }
            if let recorder = runner.coverage {
                let scripts = (try? ScriptSetReader.policySources(config.scripts.directory)) ?? []
                print(CoverageReport.text(recorder, scripts: scripts), terminator: "")
            }
            // Piped output (CI, --watch under a log) must not wait in a buffer.
            fflush(nil)
            return TestReport.totals(results).ok
        }

        /// `--config`, or the nearest `gateway.yaml` in the first path's folder or above it.
        func resolveConfig() throws -> String {
            if let config { return config }
            var folder = URL(fileURLWithPath: paths.first ?? ".").standardizedFileURL
            var isDirectory = false
            if !FileManager.default.fileExists(atPath: folder.path, isDirectory: &isDirectory) || !isDirectory {
                folder.deleteLastPathComponent()
            }
            while true {
                let candidate = folder.appendingPathComponent("gateway.yaml").path
                if FileManager.default.fileExists(atPath: candidate) { return candidate }
                if folder.path == "/" { break }
                folder.deleteLastPathComponent()
            }
            throw ValidationError("no gateway.yaml found above \(paths.first ?? "."); pass --config")
        }
    }
}
