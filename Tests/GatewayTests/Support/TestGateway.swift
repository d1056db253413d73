import Config
import EchoUpstream
import Foundation
import Gateway
import Logging
import NIOCore
import NIOPosix

/// An echo upstream and a gateway in this process, on free ports, with a config file in a
/// temporary folder that a test may rewrite (then `reload()`).
final class TestGateway: Sendable {
    let gateway: Gateway
    let port: Int
    let echoPort: Int
    let configPath: String
    let stats: EchoStats
    private let echo: Channel
    private let echoGroup: MultiThreadedEventLoopGroup

    /// `yaml` may use `@ECHO@` for the echo upstream's address and `@PORT@` for the listener port.
    /// `scripts` are written to `policies/` next to the config (name → source).
    static func start(_ yaml: String = TestGateway.defaultConfig, workers: Int = 2, scripts: [String: String] = [:], logger: Logger? = nil) async throws -> TestGateway {
        let group = MultiThreadedEventLoopGroup(numberOfThreads: 1)
        let stats = EchoStats()
        let echo = try await EchoServer.start(host: "127.0.0.1", port: 0, group: group, stats: stats)
        let echoPort = echo.localAddress!.port!
        let folder = FileManager.default.temporaryDirectory.appendingPathComponent("moongate-test-\(UUID().uuidString)")
        try FileManager.default.createDirectory(at: folder, withIntermediateDirectories: true)
        let path = folder.appendingPathComponent("gateway.yaml").path
        for (name, source) in scripts { try writeScript(name, source, folder: folder.path) }
        // The access log (stdout by default) would bury the test output: off unless a test asks.
        let quiet = yaml.contains("access_log:") ? yaml : yaml + "\naccess_log: { to: \"off\" }\n"
        try render(quiet, echoPort: echoPort, listenPort: 0).write(toFile: path, atomically: true, encoding: .utf8)
        var logger = logger ?? Logger(label: "test")
        logger.logLevel = .warning
        let gateway = Gateway(configPath: path, workers: workers, environment: ProcessInfo.processInfo.environment, logger: logger)
        try await gateway.start()
        let port = await gateway.boundPorts().values.first!
        return TestGateway(gateway: gateway, port: port, echoPort: echoPort, configPath: path, stats: stats, echo: echo, group: group)
    }

    private init(gateway: Gateway, port: Int, echoPort: Int, configPath: String, stats: EchoStats, echo: Channel, group: MultiThreadedEventLoopGroup) {
        self.gateway = gateway
        self.port = port
        self.echoPort = echoPort
        self.configPath = configPath
        self.stats = stats
        self.echo = echo
        self.echoGroup = group
    }

    static func render(_ yaml: String, echoPort: Int, listenPort: Int) -> String {
        yaml.replacingOccurrences(of: "@ECHO@", with: "127.0.0.1:\(echoPort)")
            .replacingOccurrences(of: "@PORT@", with: "\(listenPort)")
    }

    /// Replaces the config file and reloads. `@PORT@` stays 0, as in the first config: the
    /// listener is the same one, still on the port it was given.
    @discardableResult
    func rewrite(_ yaml: String) async throws -> Gateway.ReloadResult {
        let quiet = yaml.contains("access_log:") ? yaml : yaml + "\naccess_log: { to: \"off\" }\n"
        try Self.render(quiet, echoPort: echoPort, listenPort: 0).write(toFile: configPath, atomically: true, encoding: .utf8)
        return await gateway.reload()
    }

    /// Writes `policies/<name>` next to the config (replacing it whole, as an editor's save would).
    static func writeScript(_ name: String, _ source: String, folder: String) throws {
        let path = folder + "/policies/" + name
        try FileManager.default.createDirectory(atPath: (path as NSString).deletingLastPathComponent, withIntermediateDirectories: true)
        try source.write(toFile: path, atomically: true, encoding: .utf8)
    }

    func writeScript(_ name: String, _ source: String) throws {
        try Self.writeScript(name, source, folder: (configPath as NSString).deletingLastPathComponent)
    }

    func client(timeout: Double = 10) throws -> RawClient { try RawClient(port: port, timeout: timeout) }

    func stop() async {
        await gateway.shutdown()
        try? await echo.close()
        try? await echoGroup.shutdownGracefully()
        try? FileManager.default.removeItem(atPath: (configPath as NSString).deletingLastPathComponent)
    }

    static let defaultConfig = """
        listeners:
          - name: test
            address: 127.0.0.1:@PORT@
        limits:
          max_header_bytes: 4k
          max_headers: 20
          max_uri_bytes: 1k
          max_body_bytes: 1k
        timeouts:
          request: 5s
          drain: 5s
        upstreams:
          echo:
            targets: [ "@ECHO@" ]
            read_timeout: 500ms
          dead:
            targets: [ "127.0.0.1:1" ]
        routes:
          - name: stripped
            match: { path_prefix: /api/ }
            upstream: echo
            strip_prefix: true
          - name: target-host
            match: { path_prefix: /target-host }
            upstream: echo
            host_header: target
          - name: fixed-host
            match: { path_prefix: /fixed-host }
            upstream: echo
            host_header: internal.example
          - name: slow-fixed
            match: { path_prefix: /slow-fixed }
            upstream: echo
            strip_prefix: true
            host_header: internal.example
          - name: big
            match: { path: /upload, methods: [POST, PUT] }
            upstream: echo
            max_body_bytes: 1GB
          - name: only-get
            match: { path_prefix: /get-only, methods: [GET] }
            upstream: echo
          - name: vhost
            match: { host: api.example.com, path_prefix: /vhost }
            upstream: echo
          - name: dead
            match: { path_prefix: /dead }
            upstream: dead
          - name: default
            match: { path_prefix: / }
            upstream: echo
        """
}

/// Runs `body` with a started gateway and always stops it.
func withGateway<T>(
    _ yaml: String = TestGateway.defaultConfig, workers: Int = 2, scripts: [String: String] = [:], logger: Logger? = nil,
    _ body: (TestGateway) async throws -> T
) async throws -> T {
    let gw = try await TestGateway.start(yaml, workers: workers, scripts: scripts, logger: logger)
    do {
        let result = try await body(gw)
        await gw.stop()
        return result
    } catch {
        await gw.stop()
        throw error
    }
}
