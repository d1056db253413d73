import Config
import FoundationEssentials
import Logging
import NIOCore
import NIOPosix

/// A gateway's side of a fleet: the configuration store it follows (`store.kind: postgres`).
/// It boots the gateway from the store (or from `store.cache` while the store is down),
/// applies each new version as one generation, writes the admin API's changes, and keeps
/// serving the last good version whatever the store does.
///
/// Versions are applied one at a time and only forwards (`applied` only grows), whether a
/// change comes from a notification, the periodic check or this gateway's own write.
public actor ControlPlane {
    /// What a write through the admin API came to.
    public enum WriteOutcome: Sendable {
        case applied(version: Int, changes: [ConfigDocument.Change])
        /// `If-Match` named a version that is no longer the latest.
        case stale(latest: Int)
        case invalid([ConfigProblem])
        case unavailable(String)
        /// Written to the store, but this gateway refused it (it validated a moment before).
        case writtenNotApplied(version: Int, [ConfigProblem])
    }

    let settings: StoreConfig
    let store: PostgresConfigStore
    private weak var gateway: Gateway?
    private let logger: Logger
    private let group: MultiThreadedEventLoopGroup
    /// The version the running generation was built from (0 before the first).
    private(set) var applied = 0
    private var appliedDocument = ConfigDocument()
    /// The store answered the last question asked of it.
    private(set) var reachable = false
    private(set) var lastError: String?
    /// Started from `store.cache` because the store could not be reached.
    private(set) var bootedFromCache = false
    /// The newest version this gateway refused, and why: it is not tried again.
    private(set) var refused: (version: Int, problems: [ConfigProblem])?
    private var follower: Task<Void, Never>?
    /// The last cache write (each waits for the one before: the newest version lands last).
    private var cacheWrite: Task<Void, Never>?
    /// The end of the chain of version changes (one at a time, in order).
    private var tail: Task<Void, Never>?

    init(settings: StoreConfig, logger: Logger) throws {
        guard let url = settings.postgres else { throw ConfigError([ConfigDiagnostic(file: "", line: 0, path: "store.url", message: "required")]) }
        var password: String?
        if let file = settings.passwordFile {
            guard let data = FileManager.default.contents(atPath: file) else {
                throw ConfigError([ConfigDiagnostic(file: file, line: 0, path: "store.password_file", message: "cannot read the password file")])
            }
            password = String(String(decoding: data, as: UTF8.self).trimmingWhitespace())
        }
        self.settings = settings
        self.logger = logger
        // postgres-nio on a loop of its own: never on a worker's loop.
        group = MultiThreadedEventLoopGroup(numberOfThreads: 1)
        store = PostgresConfigStore(url: url, password: password, eventLoop: group.next(), logger: logger)
    }

    // MARK: Start and follow

    /// The document to start with: the store's latest version (seeded with `seed` when the
    /// store is empty), else the cache's when the store cannot be reached. Throws when neither
    /// has one.
    func bootstrap(seed: () throws -> ConfigDocument) async throws -> ConfigDocument {
        var lastError: any Error = PostgresConfigStore.NotificationsEnded()
        for attempt in 0..<3 {
            do {
                var latest = try await store.latest()
                if latest == nil {
                    let document = try seed()
                    _ = try await store.write(document, after: 0, tokenID: "bootstrap", summary: "seeded from the YAML file")
                    latest = try await store.latest()
                    logger.notice("config store was empty: seeded it from the YAML file", metadata: ["store": "\(settings.postgres!)"])
                }
                guard let latest else { continue }
                reachable = true
                applied = latest.version
                appliedDocument = latest.document
                return latest.document
            } catch let error as ConfigError {
                throw error
            } catch {
                lastError = error
                self.lastError = PostgresConfigStore.describe(error)
                if attempt < 2 { try? await Task.sleep(for: .milliseconds(500 << attempt)) }
            }
        }
        guard let cache = settings.cache, let cached = Self.readCache(cache) else {
            throw ConfigError([
                ConfigDiagnostic(
                    file: "", line: 0, path: "store",
                    message: "the config store \(settings.postgres!) cannot be reached (\(PostgresConfigStore.describe(lastError))) and there is no store.cache to start from")
            ])
        }
        bootedFromCache = true
        applied = cached.version
        appliedDocument = cached.document
        logger.warning(
            "config store unreachable: started from the cache", metadata: ["cache": "\(cache)", "version": "\(cached.version)", "error": "\(PostgresConfigStore.describe(lastError))"])
        return cached.document
    }

    /// Starts following the store: notifications, a version check every `store.poll`, and
    /// reconnection with back-off when the store goes away.
    func follow(_ gateway: Gateway) {
        self.gateway = gateway
        writeCache()
        follower = Task { [weak self] in
            var backoff = Duration.milliseconds(100)
            while !Task.isCancelled {
                guard let self else { return }
                do {
                    try await self.followOnce()
                } catch {
                    await self.lost(error)
                }
                guard !Task.isCancelled else { return }
                try? await Task.sleep(for: backoff)
                backoff = min(backoff * 2, .seconds(5))
                if await self.reachable { backoff = .milliseconds(100) }
            }
        }
    }

    private func followOnce() async throws {
        try await sync()
        let poll = settings.poll
        try await withThrowingTaskGroup(of: Void.self) { group in
            group.addTask { [store] in
                try await store.listen { _ in try? await self.sync() }
            }
            group.addTask {
                while true {
                    try await Task.sleep(for: poll)
                    try await self.sync()
                }
            }
            try await group.next()
            group.cancelAll()
        }
    }

    private func lost(_ error: any Error) {
        guard !Task.isCancelled else { return }
        let error = PostgresConfigStore.describe(error)
        if reachable || lastError == nil {
            logger.error(
                "config store unreachable; serving the last good configuration and reconnecting",
                metadata: ["store": "\(settings.postgres!)", "version": "\(applied)", "error": "\(error)"])
        }
        reachable = false
        lastError = error
    }

    func stop() async {
        follower?.cancel()
        follower = nil
        await store.close()
        try? await group.shutdownGracefully()
    }

    /// Applies the store's latest version if it is newer than the running one.
    func sync() async throws {
        let latest = try await store.latestVersion()
        if !reachable {
            logger.notice("config store reachable again", metadata: ["store": "\(settings.postgres!)"])
        }
        reachable = true
        lastError = nil
        guard latest > applied, latest != refused?.version else { return }
        guard let stored = try await store.read(latest) else { return }
        _ = await inOrder { await self.adopt(stored) }
    }

    /// Runs `body` after every change started before it.
    private func inOrder<T: Sendable>(_ body: @escaping @Sendable () async -> T) async -> T {
        let previous = tail
        let task = Task {
            await previous?.value
            return await body()
        }
        tail = Task { _ = await task.value }
        return await task.value
    }

    /// Records `stored` as the running version: called by the gateway once its generation is
    /// certain to serve, before traffic sees it (and again after, which changes nothing).
    private func commit(_ stored: StoredConfig) {
        applied = stored.version
        appliedDocument = stored.document
        refused = nil
        bootedFromCache = false
    }

    /// Makes `stored` the running configuration, if it is newer and this gateway accepts it.
    @discardableResult
    private func adopt(_ stored: StoredConfig) async -> [ConfigProblem] {
        guard stored.version > applied, let gateway else { return [] }
        let result = await gateway.apply(stored.document) { await self.commit(stored) }
        guard result.succeeded else {
            if refused?.version != stored.version {
                logger.error(
                    "config store version refused; still serving the last good one",
                    metadata: ["version": "\(stored.version)", "serving": "\(applied)", "problems": "\(result.errors.joined(separator: "; "))"])
                await gateway.countStoreRefusal()
            }
            refused = (stored.version, result.problems)
            return result.problems
        }
        commit(stored)
        logger.info("config store version applied", metadata: ["version": "\(stored.version)", "generation": "\(result.generation)"])
        writeCache()
        return []
    }

    // MARK: The admin API

    /// The running configuration and its version.
    func snapshot() -> StoredConfig { StoredConfig(version: applied, document: appliedDocument) }

    /// Writes `document` on top of version `expected` (nil: on top of the latest, for writes
    /// of one entity, whose `change` is applied to the latest document), then applies it.
    func write(
        expected: Int?, tokenID: String, summary: String? = nil, _ change: @escaping @Sendable (ConfigDocument) -> ConfigDocument
    ) async -> WriteOutcome {
        guard let gateway else { return .unavailable("not started") }
        for _ in 0..<5 {
            let base: StoredConfig
            do {
                let latest = try await store.latestVersion()
                if let expected, expected != latest { return .stale(latest: latest) }
                if latest < applied {
                    return .unavailable("the store's latest version (\(latest)) is older than the one serving (\(applied)): was it reset or restored from a backup?")
                }
                guard let stored = latest == applied ? snapshot() : try await store.read(latest) else { return .unavailable("version \(latest) vanished") }
                base = stored
            } catch {
                return .unavailable(PostgresConfigStore.describe(error))
            }
            let document = change(base.document)
            let problems = await gateway.check(document, keep: true)
            if !problems.isEmpty { return .invalid(problems) }
            let changes = document.changes(from: base.document)
            let written: Int?
            do {
                written = try await store.write(
                    document, after: base.version, tokenID: tokenID, summary: summary ?? ConfigDocument.summary(changes))
            } catch {
                return .unavailable(PostgresConfigStore.describe(error))
            }
            guard let version = written else {
                if expected != nil { return .stale(latest: (try? await store.latestVersion()) ?? base.version + 1) }
                continue  // an entity write goes on top of whatever won
            }
            logger.notice(
                "config written", metadata: ["version": "\(version)", "token": "\(tokenID)", "summary": "\(ConfigDocument.summary(changes))"])
            let problems2 = await inOrder { await self.adopt(StoredConfig(version: version, document: document)) }
            if !problems2.isEmpty { return .writtenNotApplied(version: version, problems2) }
            return .applied(version: version, changes: changes)
        }
        return .stale(latest: applied)
    }

    func versions(limit: Int) async throws -> [ConfigVersionInfo] { try await store.versions(limit: limit) }

    func read(version: Int) async throws -> StoredConfig? { try await store.read(version) }

    /// What `/status` shows of the store.
    var statusJSON: JSONValue {
        var out: [String: JSONValue] = [
            "kind": "postgres", "url": .string("\(settings.postgres!)"), "reachable": .bool(reachable), "version": .int(applied),
            "booted_from_cache": .bool(bootedFromCache),
        ]
        if let lastError { out["error"] = .string(lastError) }
        if let refused {
            out["refused"] = .object(["version": .int(refused.version), "errors": .array(refused.problems.map(\.json))])
        }
        return .object(out)
    }

    // MARK: The cache

    private func writeCache() {
        guard let path = settings.cache else { return }
        let (version, document, logger) = (applied, appliedDocument, self.logger)
        // Serializing a large document and writing a file: off the actors' threads.
        cacheWrite = Task { [previous = cacheWrite] in
            await previous?.value
            do {
                try await BackgroundWork.run {
                    let text = JSONValue.object(["version": .int(version), "document": document.json]).canonicalText
                    let temporary = path + ".tmp"
                    // Written aside and renamed over: a crash mid-write never leaves half a cache.
                    try Data(text.utf8).write(to: URL(fileURLWithPath: temporary))
                    guard rename(temporary, path) == 0 else { throw POSIXError(POSIXErrorCode(rawValue: errno) ?? .EIO) }
                }
            } catch {
                logger.warning("cannot write store.cache", metadata: ["cache": "\(path)", "error": "\(error)"])
            }
        }
    }

    static func readCache(_ path: String) -> StoredConfig? {
        guard let data = FileManager.default.contents(atPath: path), case .success(let json) = JSONValue.parse(Array(data)),
            case .int(let version)? = json["version"], let body = json["document"], let document = try? ConfigDocument(json: body)
        else { return nil }
        return StoredConfig(version: version, document: document)
    }
}
