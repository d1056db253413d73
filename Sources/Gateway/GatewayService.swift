import Config
import FoundationEssentials
import Logging
import UnixSignals
import Proxy

/// Runs a `Gateway` until `SIGTERM` or `SIGINT`: reloads on `SIGHUP` and on changes to the
/// config file, and drains and stops on the first of those two signals.
public struct GatewayService: Sendable {
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

    /// Reloads when the config file, a script, or a key file the config names (JWKS, PEM,
    /// secret, API keys, listeners' certificates and keys) changes: rotating a key is saving its file. A reload that changes
    /// what is watched moves the watch with it.
    private func watchFiles() async {
        var warned = false
        while !Task.isCancelled {
            let config = await gateway.generation?.config
            // With a config store the scripts come from the store: their folder is not watched.
            let scripts = config?.scripts.sources == nil ? config?.scripts.directory : nil
            // User plugins reload when saved, like scripts.
            let directories = ((scripts.map { [$0] } ?? []) + (config?.plugins.dirs ?? [])).filter { FileManager.default.fileExists(atPath: $0) }
            let keyFiles = config.map(Self.keyFiles) ?? []
            let paths = [gateway.configPath] + keyFiles
            guard let watcher = try? FileWatcher(paths: paths, directories: directories) else {
                // Out of descriptors or inotify watches, say. Returning would end the service
                // (and so the gateway): try again in a while instead.
                if !warned { logger.warning("cannot watch the config file; reload with SIGHUP (trying again every second)") }
                warned = true
                try? await Task.sleep(for: .seconds(1))
                continue
            }
            if warned { logger.info("watching the config file again") }
            warned = false
            // A change made after the files were read but before the watch began is not an
            // event: look for one.
            if Self.modified(since: await gateway.lastReadAt, paths: paths, directories: directories) {
                logger.info("config or scripts changed: reloading")
                await reload()
            }
            await withTaskCancellationHandler {
                for await _ in watcher.changes {
                    logger.info("config or scripts changed: reloading")
                    await reload()
                    let now = await gateway.generation?.config
                    let nowScripts = now?.scripts.sources == nil ? now?.scripts.directory : nil
                    if nowScripts != scripts || now.map(Self.keyFiles) != keyFiles { break }
                }
            } onCancel: {
                watcher.stop()
            }
            watcher.stop()
        }
    }

    /// The key files `config` reads.
    static func keyFiles(_ config: GatewayConfig) -> [String] {
        config.keysets.flatMap { keyset in keyset.keys.compactMap(\.file) + (keyset.jwksFile.map { [$0] } ?? []) }
            + config.apiKeys.compactMap(\.file)
            // A renewed certificate is saving its files: new connections get it, open ones keep theirs.
            + config.listeners.flatMap { listener in
                (listener.tls?.certificates ?? []).flatMap { [$0.cert, $0.key] } + (listener.tls?.clientCA.map { [$0] } ?? [])
            }
            + config.upstreams.flatMap { upstream in [upstream.tls?.caFile, upstream.tls?.cert, upstream.tls?.key].compactMap { $0 } }
    }

    /// Whether any of `paths`, or any file under `directories`, changed after `date`.
    static func modified(since date: Date, paths: [String], directories: [String]) -> Bool {
        let fm = FileManager.default
        var files = paths
        for directory in directories {
            for relative in (try? fm.subpathsOfDirectory(atPath: directory)) ?? [] { files.append(directory + "/" + relative) }
        }
        return files.contains { path in
            ((try? fm.attributesOfItem(atPath: path))?[.modificationDate] as? Date).map { $0 >= date } ?? false
        }
    }

    public func run() async throws {
        // Trapped before the listeners open: SIGHUP's default action ends the process, and a
        // reload sent as soon as the port answers must not kill the gateway.
        let hangups = await UnixSignalsSequence(trapping: .sighup)
        let stops = await UnixSignalsSequence(trapping: .sigterm, .sigint)
        try await gateway.start()
        settle()
        await withTaskGroup(of: Void.self) { group in
            group.addTask {
                for await _ in hangups {
                    logger.info("SIGHUP: reloading")
                    await reload()
                }
            }
            if watch {
                group.addTask { await watchFiles() }
            }
            group.addTask {
                for await signal in stops {
                    logger.info("received \(signal)")
                    return
                }
            }
            _ = await group.next()
            group.cancelAll()
        }
        logger.info("shutting down: draining connections")
        await gateway.shutdown()
    }
}
