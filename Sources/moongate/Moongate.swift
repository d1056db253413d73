import ArgumentParser
import Auth
import CHiredis
import CLua
import COpenSSL
import Config
import CoreMetrics
import EchoUpstream
import FoundationEssentials
import Glibc
import Gateway
import Logging
import NIOPosix
import Plugins
import Prometheus
import Proxy
import RateLimit
import Scripting
import Telemetry
import NIOCore

@main
struct Moongate: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "A programmable HTTP API gateway: SwiftNIO data plane, policies in Lua 5.4.",
        version: Version.text,
        subcommands: [Run.self, Check.self, Test.self, PluginsCommand.self, Echo.self, AdminToken.self, BenchRuntime.self],
        defaultSubcommand: nil)
}

enum Version {
    static let moongate = "0.1.0"

    /// The versions of the C libraries this binary is linked against.
    static var text: String {
        let lua = "\(LUA_VERSION_NUM / 100).\(LUA_VERSION_NUM % 100)"
        let openssl = String(cString: OpenSSL_version(Int32(OPENSSL_VERSION)))
        let hiredis = "\(HIREDIS_MAJOR).\(HIREDIS_MINOR).\(HIREDIS_PATCH)"
        return "moongate \(moongate) (Lua \(lua), \(openssl), hiredis \(hiredis))"
    }
}

extension Moongate {
    struct Run: AsyncParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Run the gateway.",
            discussion: """
                Reloads the config when the file changes or on SIGHUP; a config that does not \
                validate is reported and the running one keeps serving. SIGTERM or SIGINT drains \
                in-flight requests (up to timeouts.drain) and exits 0.
                """)

        @Option(name: .shortAndLong, help: "The gateway YAML file.")
        var config: String

        @Option(help: "Event loops serving traffic (default: the config's `workers`, else one per core).")
        var workers: Int?

        @Option(help: "trace, debug, info, notice, warning, error or critical (default: the config's log_level).")
        var logLevel: Logger.Level?

        @Option(help: "json or text (default: the config's log_format, else JSON unless stderr is a terminal).")
        var logFormat: String?

        @Flag(help: "Do not watch the config file, the scripts or the key files for changes (SIGHUP still reloads them all).")
        var noWatch = false

        @Flag(help: "Keep code pages touched only at start-up resident (by default they are released after start-up and reloads).")
        var keepStartupPages = false

        func validate() throws {
            if let workers, !(1...1024).contains(workers) { throw ValidationError("--workers must be between 1 and 1024") }
            if let logFormat, logFormat != "json", logFormat != "text" { throw ValidationError("--log-format is json or text") }
        }

        func run() async throws {
            let environment = ProcessInfo.processInfo.environment
            let loaded: GatewayConfig
            do {
                loaded = try ConfigLoader.load(path: config, environment: environment)
            } catch {
                StandardError.write("\(error)\n")
                throw ExitCode(1)
            }
            let level = logLevel ?? Logger.Level(rawValue: loaded.logLevel) ?? .info
            // Operational logs go to stderr; stdout is the access log's (as Kong and nginx
            // containers split them).
            // JSON lines for log shippers unless a person is watching (stderr is a terminal).
            let json = (logFormat ?? loaded.logFormat).map { $0 == "json" } ?? (isatty(2) == 0)
            LoggingSystem.bootstrap { label in
                if json {
                    var handler = JSONLogHandler(label: label)
                    handler.logLevel = level
                    return handler
                }
                var handler = StreamLogHandler.standardError(label: label)
                handler.logLevel = level
                return handler
            }
            let logger = Logger(label: "moongate")
            let gateway = Gateway(
                configPath: config, workers: workers, environment: environment, logger: logger, version: Version.moongate)
            // Whatever reports through swift-metrics shows on the admin `/metrics` too.
            MetricsSystem.bootstrap(PrometheusMetricsFactory(registry: gateway.prometheus))
            let service = GatewayService(gateway: gateway, logger: logger, watch: !noWatch, releaseColdPages: !keepStartupPages)
            try await service.run()
        }
    }

    struct Check: ParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Validate a config file and print every problem found (exit 1 if any).")

        @Option(name: .shortAndLong, help: "The gateway YAML file.")
        var config: String

        func run() throws {
            do {
                let loaded = try ConfigLoader.load(path: config)
                // Every module the gateway gives scripts (the stores in memory: nothing is
                // dialled), so a script that uses one at load time checks as it runs.
                let modules =
                    try AuthModules.make(loaded) + RateLimitModules.forTests(config: loaded, clock: SystemClock()).modules
                    + [MetricsModule(families: ScriptMetricFamilies(maxSeries: loaded.metrics.maxSeries)), KVModule(store: MemoryKV())]
                if let program = try ProxyGeneration.loadScripts(loaded, modules: modules) {
                    let bytes = try program.validate()
                    print("\(loaded.scripts.directory): OK (\(program.policies.count) policies, \(program.scripts.files.count) scripts, \(bytes / 1024) KiB per Lua state)")
                }
                print("\(config): OK (\(loaded.listeners.count) listeners, \(loaded.upstreams.count) upstreams, \(loaded.routes.count) routes)")
            } catch {
                StandardError.write("\(error)\n")
                throw ExitCode(1)
            }
        }
    }

    struct AdminToken: ParsableCommand {
        static let configuration = CommandConfiguration(
            commandName: "admin-token",
            abstract: "Make an admin API token: prints the token (give it to the client) and its line for admin.token_file.",
            discussion: "The token file keeps only the token's SHA-256; the token itself is shown once, here.")

        @Argument(help: "The token's id: it names the writer in GET /v1/config/versions and the log.")
        var id: String

        func validate() throws {
            guard !id.isEmpty, id.utf8.count <= 64, id.allSatisfy({ $0.isASCII && ($0.isLetter || $0.isNumber || "-_.@".contains($0)) }) else {
                throw ValidationError("the id is 1 to 64 letters, digits, -, _, . or @")
            }
        }

        func run() throws {
            let (token, line) = AdminTokens.make(id: id)
            print("token: \(token)")
            print("line for admin.token_file: \(line)")
        }
    }

    struct Echo: AsyncParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Run a demo upstream that answers with what it received.",
            discussion: "Paths: /status/N, /delay/MS, /bytes/N[?chunked=1], /close; anything else echoes the request as JSON.")

        @Option(help: "Address to listen on.")
        var host = "127.0.0.1"

        @Option(help: "Port to listen on.")
        var port = 9000

        func run() async throws {
            let group = MultiThreadedEventLoopGroup.singleton
            let channel = try await EchoServer.start(host: host, port: port, group: group)
            print("moongate echo listening on \(host):\(channel.localAddress?.port ?? port)")
            try await channel.closeFuture.get()
        }
    }
}

/// `moongate bench-runtime`: the cost of entering the Lua runtime per request (for
/// scripts/bench; hidden from help).
struct BenchRuntime: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "bench-runtime", abstract: "Measure the Lua runtime's per-request overhead.", shouldDisplay: false)

    @Option(help: "Requests per policy.")
    var iterations = 1_000_000

    @Option(help: "Run only the pattern policy, on `ours` or `stock` (for callgrind).")
    var patternsOnly: String?

    func run() throws {
        if let side = patternsOnly {
            let figures = try RuntimeMicrobenchmark.patterns(iterations: iterations, only: side == "stock")
            print("patterns \(side): \(max(figures.ours, figures.stock).fixed(0)) ns CPU per request")
            return
        }
        let figures = try RuntimeMicrobenchmark.run(iterations: iterations)
        for (name, ns) in figures.nanoseconds {
            print("\(name.padded(right: 14)) \(ns.fixed(0).padded(left: 7)) ns per request")
        }
        print("pooled state   \(figures.stateBytes / 1024) KiB (\(figures.stateBytes) bytes)")
        let patterns = try RuntimeMicrobenchmark.patterns(iterations: max(iterations / 20, 1000), rounds: 15)
        print(
            "patterns       \(patterns.ours.fixed(0).padded(left: 7)) ns CPU per request (system library's: \(patterns.stock.fixed(0)) ns; ratio \((patterns.ours / patterns.stock).fixed(3)))")
    }
}

extension Logger.Level: @retroactive ExpressibleByArgument {}
