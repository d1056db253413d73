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
    private let releaseColdPages: Bool

    /// `releaseColdPages`: after start-up and each reload, drop the code pages only those
    /// touched from this process's resident set (see `ColdPages`).
    public init(gateway: Gateway, logger: Logger, watch: Bool = true, releaseColdPages: Bool = true) {
        self.gateway = gateway
        self.logger = logger
        self.watch = watch
        self.releaseColdPages = releaseColdPages
    }

    private func settle() {
        guard releaseColdPages else { return }
        let bytes = ColdPages.release()
        logger.debug("released cold pages", metadata: ["advised_bytes": "\(bytes)"])
    }

    private func reload() async {
        await gateway.reload()
        settle()
    }

    public func run() async throws {
        // Trapped before the listeners open: SIGHUP's default action ends the process, and a
        // reload sent as soon as the port answers must not kill the gateway.
        let hangups = await UnixSignalsSequence(trapping: .sighup)
        try await gateway.start()
        settle()
        let watcher = watch ? try? FileWatcher(paths: [gateway.configPath]) : nil
        if watch, watcher == nil { logger.warning("cannot watch the config file; reload with SIGHUP") }
        await withTaskGroup(of: Void.self) { group in
            group.addTask {
                for await _ in hangups {
                    logger.info("SIGHUP: reloading")
                    await reload()
                }
            }
            if let watcher {
                group.addTask {
                    for await _ in watcher.changes {
                        logger.info("config file changed: reloading")
                        await reload()
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
