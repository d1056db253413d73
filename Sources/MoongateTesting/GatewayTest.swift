import Config
import Foundation
import Gateway
import Harness
import HTTPClient
import Logging
import NIOCore
import NIOHTTP1
import NIOPosix
import Proxy

// What a test reads and writes comes with this module.
@_exported import struct Proxy.SimulatedMessage
@_exported import struct Proxy.UpstreamCall
@_exported import struct NIOCore.TimeAmount

/// How a test runs the gateway (as Hummingbird's `Application.test(.router | .live)`).
public enum GatewayTestMode: Sendable {
    /// In this process, on the real handlers over in-memory pipes, on a clock the test moves
    /// (`advance`): no sockets, no real time, the same answers.
    case inProcess
    /// A real gateway on loopback sockets, its upstreams served by the test's stub on real
    /// sockets too.
    case live
}

/// What a test drives: requests in, the gateway's answers out.
public protocol GatewayTestClient {
    /// Sends one request (on a new connection) and returns the gateway's response.
    func execute(_ request: SimulatedMessage) async throws -> SimulatedMessage
    /// Moves the gateway's clock (timeouts, breakers, ejections, scripts' `now()`). In-process
    /// only: a live gateway runs on real time.
    func advance(by amount: TimeAmount) async throws
}

/// A gateway configuration and its policies, run the same way in either mode so a test can
/// check both. In `yaml`, `@STUB:name@` is an upstream target the test's stub answers (the
/// `UpstreamCall` says for which upstream); listeners' addresses are chosen by the test.
///
///     let test = GatewayTest(yaml: yaml, scripts: ["auth.lua": source])
///     try await test.run(.inProcess, stub: { call in SimulatedMessage(status: 200) }) { client in
///         let response = try await client.execute(SimulatedMessage(method: "GET", target: "/"))
///     }
public struct GatewayTest: Sendable {
    public var yaml: String
    /// Policy files by name, written to the config's `scripts` folder (`policies/`).
    public var scripts: [String: String]

    public init(yaml: String, scripts: [String: String] = [:]) {
        self.yaml = yaml
        self.scripts = scripts
    }

    /// Runs `body` against a gateway started in `mode`, with `stub` answering every upstream
    /// request, and stops it afterwards.
    public func run<T>(
        _ mode: GatewayTestMode, stub: @escaping @Sendable (UpstreamCall) -> SimulatedMessage,
        _ body: (any GatewayTestClient) async throws -> T
    ) async throws -> T {
        let folder = FileManager.default.temporaryDirectory.appendingPathComponent("moongate-test-\(UUID().uuidString)").path
        try FileManager.default.createDirectory(atPath: folder + "/policies", withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(atPath: folder) }
        for (name, source) in scripts { try source.write(toFile: folder + "/policies/" + name, atomically: true, encoding: .utf8) }
        let names = Self.stubNames(yaml)
        switch mode {
        case .inProcess:
            // Any address: the simulation's connector answers every upstream connection.
            var addresses: [String: String] = [:]
            for (index, name) in names.enumerated() { addresses[name] = "127.0.0.1:\(20000 + index)" }
            let path = try write(folder, addresses: addresses, listenPort: 8080)
            let client = try InProcessClient(configPath: path, stub: stub)
            return try await body(client)
        case .live:
            let group = MultiThreadedEventLoopGroup(numberOfThreads: 1)
            var servers: [Channel] = []
            var addresses: [String: String] = [:]
            do {
                for name in names {
                    let server = try await StubServer.start(upstream: name, stub: stub, group: group)
                    servers.append(server)
                    addresses[name] = "127.0.0.1:\(server.localAddress!.port!)"
                }
                let path = try write(folder, addresses: addresses, listenPort: 0)
                var logger = Logger(label: "moongate-test")
                logger.logLevel = .warning
                let gateway = Gateway(configPath: path, workers: 1, environment: [:], logger: logger)
                try await gateway.start()
                let port = await gateway.boundPorts().values.first!
                let client = LiveClient(port: port, group: group)
                do {
                    let result = try await body(client)
                    await gateway.shutdown()
                    for server in servers { try? await server.close() }
                    try? await group.shutdownGracefully()
                    return result
                } catch {
                    await gateway.shutdown()
                    throw error
                }
            } catch {
                for server in servers { try? await server.close() }
                try? await group.shutdownGracefully()
                throw error
            }
        }
    }

    /// The upstream names `@STUB:name@` placeholders stand for, in order of appearance.
    static func stubNames(_ yaml: String) -> [String] {
        var names: [String] = []
        var rest = Substring(yaml)
        while let start = rest.range(of: "@STUB:"), let end = rest[start.upperBound...].firstIndex(of: "@") {
            let name = String(rest[start.upperBound..<end])
            if !names.contains(name) { names.append(name) }
            rest = rest[rest.index(after: end)...]
        }
        return names
    }

    private func write(_ folder: String, addresses: [String: String], listenPort: Int) throws -> String {
        var text = yaml.replacingOccurrences(of: "@PORT@", with: "\(listenPort)")
        for (name, address) in addresses { text = text.replacingOccurrences(of: "@STUB:\(name)@", with: address) }
        if !text.contains("access_log:") { text += "\naccess_log: { to: \"off\" }\n" }
        let path = folder + "/gateway.yaml"
        try text.write(toFile: path, atomically: true, encoding: .utf8)
        return path
    }
}

/// The gateway's real handlers over in-memory pipes (`SimulatedGateway`), with the modules a
/// gateway has (`jwt`, `redis_bucket` in memory, `metrics`) on the harness's clock.
final class InProcessClient: GatewayTestClient {
    private let simulation: SimulatedGateway
    private let clock: FakeClock
    private let stub: (UpstreamCall) -> SimulatedMessage

    init(configPath: String, stub: @escaping (UpstreamCall) -> SimulatedMessage) throws {
        let config = try ConfigLoader.load(path: configPath)
        clock = FakeClock()
        var logger = Logger(label: "moongate-test")
        logger.logLevel = .warning
        let generation = try ProxyGeneration(id: 1, config: config, modules: try TestRunner.gatewayModules(config: config, clock: clock), clock: clock, logger: logger)
        simulation = SimulatedGateway(generation: generation, logger: logger)
        self.stub = stub
    }

    func execute(_ request: SimulatedMessage) async throws -> SimulatedMessage {
        try simulation.send(request, stub: stub).response
    }

    func advance(by amount: TimeAmount) async throws {
        clock.advance(Double(amount.nanoseconds) / 1e9)
        simulation.advance(by: amount)
    }
}

/// A real client on loopback to a live gateway.
final class LiveClient: GatewayTestClient {
    let port: Int
    let group: EventLoopGroup

    init(port: Int, group: EventLoopGroup) {
        self.port = port
        self.group = group
    }

    func execute(_ request: SimulatedMessage) async throws -> SimulatedMessage {
        let target = try HTTPFetch.Target(HTTPEndpoint(host: "127.0.0.1", port: port, path: request.target))
        let response = try await HTTPFetch.send(
            HTTPMethod(rawValue: request.method), target, headers: request.headers, body: request.body.isEmpty ? nil : request.body,
            on: group.next(), timeout: .seconds(10), maxBytes: 64 << 20
        ).get()
        return SimulatedMessage(status: response.status, headers: response.headers, body: response.body)
    }

    func advance(by amount: TimeAmount) async throws {
        throw SimulationError(description: "a live gateway runs on real time: advance its clock in-process only")
    }
}
