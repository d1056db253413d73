import Config
import FoundationEssentials
import Logging
import NIOCore
import NIOPosix
import Postgres

/// One version of the dynamic configuration as the store keeps it.
public struct StoredConfig: Sendable, Equatable {
    public var version: Int
    public var document: ConfigDocument
}

/// A row of `GET /v1/config/versions`: the audit trail of writes.
public struct ConfigVersionInfo: Sendable, Equatable {
    public var version: Int
    public var time: Date
    /// The admin token's id that wrote it (`bootstrap` for the seed from the YAML file).
    public var tokenID: String
    public var summary: String
}

/// The configuration's versions in PostgreSQL: a table of whole documents, one row per write,
/// the version number its key. A write is accepted only on top of the latest version (two
/// writers on the same version: the primary key lets one through), and tells every gateway
/// by `NOTIFY moongate_config`. One connection, on the control plane's own event loop.
actor PostgresConfigStore {
    static let channel = "moongate_config"

    private let url: PostgresURL
    private let password: String?
    private let eventLoop: any EventLoop
    private let logger: Logger
    private var connection: PostgresConnection?

    init(url: PostgresURL, password: String?, eventLoop: any EventLoop, logger: Logger) {
        self.url = url
        self.password = password ?? url.password
        self.eventLoop = eventLoop
        self.logger = logger
    }

    /// The schema, in order: each runs once, in a transaction, under an advisory lock so that
    /// gateways starting together migrate once. Never edit one that shipped; add the next.
    static let migrations: [String] = [
        """
        CREATE TABLE moongate_config_versions (
            version    bigint PRIMARY KEY CHECK (version > 0),
            document   text NOT NULL,
            created_at timestamptz NOT NULL DEFAULT now(),
            token_id   text NOT NULL,
            summary    text NOT NULL
        )
        """
    ]

    /// An arbitrary constant naming the migration lock (`pg_advisory_xact_lock`).
    private static let migrationLock = 0x6d6f_6f6e

    /// The open connection, or a new one (schema migrated first). Callers that arrive while a
    /// connection is being made wait for that one: two would race, and the loser's connection
    /// would be dropped open.
    func connected() async throws -> PostgresConnection {
        // After close, nothing connects again: the event loop is about to shut down, and a
        // connect begun on a loop that is gone never completes.
        guard !closed else { throw PostgresError.closed }
        if let connection, !connection.isClosed { return connection }
        if let connecting { return try await connecting.value }
        let attempt = Task { try await self.connect() }
        connecting = attempt
        defer { connecting = nil }
        let fresh = try await attempt.value
        guard !closed else {
            await fresh.close()
            throw PostgresError.closed
        }
        connection = fresh
        return fresh
    }

    private var connecting: Task<PostgresConnection, any Error>?

    private func connect() async throws -> PostgresConnection {
        let fresh = try await PostgresConnection.connect(
            host: url.host, port: url.port, user: url.user, password: password, database: url.database, on: eventLoop)
        do {
            try await migrate(fresh)
        } catch {
            await fresh.close()
            throw error
        }
        return fresh
    }

    private var closed = false

    func close() async {
        closed = true
        if let connecting { _ = try? await connecting.value }
        await connection?.close()
        connection = nil
    }

    private func migrate(_ connection: PostgresConnection) async throws {
        try await connection.query(
            "CREATE TABLE IF NOT EXISTS moongate_schema (version integer PRIMARY KEY, applied_at timestamptz NOT NULL DEFAULT now())")
        for (index, sql) in Self.migrations.enumerated() {
            let number = String(index + 1)
            try await connection.query("BEGIN")
            do {
                try await connection.query("SELECT pg_advisory_xact_lock($1)", [String(Self.migrationLock)])
                let applied = try await connection.query("SELECT 1 FROM moongate_schema WHERE version = $1", [number])
                if applied.isEmpty {
                    try await connection.query(sql)
                    try await connection.query("INSERT INTO moongate_schema (version) VALUES ($1)", [number])
                    logger.notice("config store: schema migrated", metadata: ["migration": "\(number)"])
                }
                try await connection.query("COMMIT")
            } catch {
                _ = try? await connection.query("ROLLBACK")
                throw error
            }
        }
    }

    /// Runs `body` on the connection; an error that is not the server's answer to a statement
    /// (the connection broke, timed out, was refused) drops the connection, so the next call
    /// connects again.
    private func using<T>(_ body: (PostgresConnection) async throws -> T) async throws -> T {
        let c = try await connected()
        do {
            return try await body(c)
        } catch let error as PostgresError where error.keepsConnection && !c.isClosed {
            throw error
        } catch {
            if connection === c { connection = nil }
            await c.close()
            throw error
        }
    }

    /// The latest version's number (0: the store is empty).
    func latestVersion() async throws -> Int {
        try await using { c in try await latestVersion(c) }
    }

    private func latestVersion(_ c: PostgresConnection) async throws -> Int {
        let rows = try await c.query("SELECT coalesce(max(version), 0) FROM moongate_config_versions")
        guard let text = rows.first?.first ?? nil, let version = Int(text) else { throw PostgresError.protocolViolation("latest version") }
        return version
    }

    /// One version's document, or nil when there is no such version.
    func read(_ version: Int) async throws -> StoredConfig? {
        try await using { c in try await read(version, c) }
    }

    private func read(_ version: Int, _ c: PostgresConnection) async throws -> StoredConfig? {
        let rows = try await c.query("SELECT document FROM moongate_config_versions WHERE version = $1", [String(version)])
        guard let text = rows.first?.first ?? nil else { return nil }
        let document = try await BackgroundWork.run { try Self.document(text, version: version) }
        return StoredConfig(version: version, document: document)
    }

    /// The latest version, or nil when the store is empty.
    func latest() async throws -> StoredConfig? {
        let version = try await latestVersion()
        return version == 0 ? nil : try await read(version)
    }

    /// The newest `limit` versions, newest first.
    func versions(limit: Int) async throws -> [ConfigVersionInfo] {
        try await using { c in try await versions(limit: limit, c) }
    }

    private func versions(limit: Int, _ c: PostgresConnection) async throws -> [ConfigVersionInfo] {
        let rows = try await c.query(
            "SELECT version, extract(epoch FROM created_at)::float8, token_id, summary FROM moongate_config_versions ORDER BY version DESC LIMIT $1",
            [String(limit)])
        return try rows.map { row in
            guard row.count == 4, let version = row[0].flatMap(Int.init), let seconds = row[1].flatMap(Double.init), let token = row[2], let summary = row[3] else {
                throw PostgresError.protocolViolation("a version row")
            }
            return ConfigVersionInfo(version: version, time: Date(timeIntervalSince1970: seconds), tokenID: token, summary: summary)
        }
    }

    /// Writes `document` as version `after + 1` if `after` is still the latest version; nil
    /// when another write got there first (the caller answers `412`). Notifies every gateway.
    func write(_ document: ConfigDocument, after: Int, tokenID: String, summary: String) async throws -> Int? {
        let text = try await BackgroundWork.run { document.json.canonicalText }
        return try await using { c in try await write(text, after: after, tokenID: tokenID, summary: summary, c) }
    }

    private func write(_ text: String, after: Int, tokenID: String, summary: String, _ c: PostgresConnection) async throws -> Int? {
        do {
            let rows = try await c.query(
                """
                WITH written AS (
                    INSERT INTO moongate_config_versions (version, document, token_id, summary)
                    SELECT $1::bigint + 1, $2, $3, $4
                    WHERE (SELECT coalesce(max(version), 0) FROM moongate_config_versions) = $1::bigint
                    RETURNING version)
                SELECT version, pg_notify('\(Self.channel)', version::text) FROM written
                """, [String(after), text, tokenID, summary])
            return rows.first?.first?.flatMap { Int($0) }
        } catch {
            // Two writers on the same version: the primary key let the other one in.
            if case .server(let state, _) = error, state == "23505" { return nil }
            throw error
        }
    }

    /// Calls `changed` with each version number written by any gateway, until the connection
    /// drops (then throws).
    func listen(_ changed: @escaping @Sendable (Int) async -> Void) async throws {
        try await using { c in try await listen(changed, c) }
    }

    private func listen(_ changed: @escaping @Sendable (Int) async -> Void, _ c: PostgresConnection) async throws {
        for await payload in try await c.listen(Self.channel) {
            if let version = Int(payload) { await changed(version) }
        }
        throw NotificationsEnded()
    }

    struct NotificationsEnded: Error, CustomStringConvertible {
        var description: String { "the store's connection closed" }
    }

    /// What went wrong, for logs and answers: the server's SQLSTATE and message, or the kind
    /// of failure (never the statement or its parameters, which hold documents).
    static func describe(_ error: any Error) -> String {
        "\(error)"
    }

    static func document(_ text: String, version: Int) throws -> ConfigDocument {
        switch JSONValue.parse(Array(text.utf8)) {
        case .success(let json): return try ConfigDocument(json: json)
        case .failure(let error): throw ConfigError([ConfigDiagnostic(pointer: "", message: "version \(version): \(error.message)")])
        }
    }
}
