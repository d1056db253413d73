import Config
import Logging
import ServiceLifecycle
import UnixSignals

/// Runs a `Gateway` under swift-service-lifecycle: reloads on `SIGHUP` and on changes to the
/// config file; drains and stops on graceful shutdown (`SIGTERM`, `SIGINT`).
public struct GatewayService: Service {
    public let gateway: Gateway
    private let logger: Logger
    private let watch: Bool

    public init(gateway: Gateway, logger: Logger, watch: Bool = true) {
        self.gateway = gateway
        self.logger = logger
        self.watch = watch
    }

    public func run() async throws {
        try await gateway.start()
        let watcher = watch ? try? FileWatcher(paths: [gateway.configPath]) : nil
        if watch, watcher == nil { logger.warning("cannot watch the config file; reload with SIGHUP") }
        await withTaskGroup(of: Void.self) { group in
            group.addTask {
                for await _ in await UnixSignalsSequence(trapping: .sighup) {
                    logger.info("SIGHUP: reloading")
                    await gateway.reload()
                }
            }
            if let watcher {
                group.addTask {
                    for await _ in watcher.changes {
                        logger.info("config file changed: reloading")
                        await gateway.reload()
                    }
                }
            }
            group.addTask { try? await gracefulShutdown() }
            _ = await group.next()
            watcher?.stop()
            group.cancelAll()
        }
        logger.info("shutting down: draining connections")
        await gateway.shutdown()
    }
}
