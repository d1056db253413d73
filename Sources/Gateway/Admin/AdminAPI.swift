import Config
import FoundationEssentials
import NIOHTTP1

/// The admin listener's answers: observability (`/metrics`, `/healthz`, `/readyz`,
/// `/status`), the API's description (`/openapi.json`) and the configuration API under `/v1`
/// (see `docs/admin-api.md`). Control plane only: an admin request never touches a worker's
/// loop except to read its counters.
enum AdminAPI {
    static func answer(_ request: AdminRequest, gateway: Gateway) async -> AdminResponse {
        let segments = request.segments
        guard segments.first == "v1" else { return await observability(request, gateway: gateway) }
        let tokens = await gateway.adminTokens
        let token: String
        if tokens.isOpen {
            token = "anonymous"
        } else if let id = tokens.identify(authorization: request.headers.first(name: "authorization")) {
            token = id
        } else {
            var response = AdminResponse.error(401, "a valid admin token is required (Authorization: Bearer <token>)")
            response.headers.append(("WWW-Authenticate", "Bearer realm=\"moongate-admin\""))
            return response
        }
        let api = ConfigAPI(gateway: gateway, plane: await gateway.controlPlane, token: token)
        return await api.answer(request, Array(segments.dropFirst()))
    }

    private static func observability(_ request: AdminRequest, gateway: Gateway) async -> AdminResponse {
        let known = ["/metrics", "/healthz", "/readyz", "/status", "/openapi.json"]
        guard known.contains(request.path) else {
            return .error(404, "not found: try /metrics, /healthz, /readyz, /status, /openapi.json or /v1/config")
        }
        guard request.method == .GET || request.method == .HEAD else { return .methodNotAllowed(["GET", "HEAD"]) }
        switch request.path {
        case "/metrics":
            return AdminResponse(status: 200, contentType: "text/plain; version=0.0.4; charset=utf-8", body: await gateway.metricsText())
        case "/healthz":
            return .json(200, #"{"status":"alive"}"#)
        case "/readyz":
            let (ready, why) = await gateway.readiness()
            var body: [String: JSONValue] = ["status": ready ? "ready" : "not ready", "store": await gateway.storeHealth()]
            if !ready { body["reason"] = .string(why) }
            return .json(ready ? 200 : 503, .object(body))
        case "/status":
            return .json(200, await gateway.statusJSON())
        default:
            return AdminResponse(status: 200, contentType: "application/json", body: AdminOpenAPI.document)
        }
    }
}

/// `/v1`: the configuration, its entities, versions and rollback.
struct ConfigAPI {
    let gateway: Gateway
    /// The config store, or nil when the YAML file is the source of truth (writes: `409`).
    let plane: ControlPlane?
    /// Who is asking (the admin token's id), for the audit trail.
    let token: String

    /// Most versions one `GET /v1/config/versions` lists.
    static let maxVersions = 1000

    func answer(_ request: AdminRequest, _ path: [String]) async -> AdminResponse {
        switch path.first {
        case "config" where path.count == 1:
            switch request.method {
            case .GET, .HEAD: return await readConfig()
            case .PUT: return await replaceConfig(request)
            default: return .methodNotAllowed(["GET", "HEAD", "PUT"])
            }
        case "config" where path == ["config", "versions"]:
            guard request.method == .GET || request.method == .HEAD else { return .methodNotAllowed(["GET", "HEAD"]) }
            return await versions(request)
        case "config" where path == ["config", "rollback"]:
            guard request.method == .POST else { return .methodNotAllowed(["POST"]) }
            return await rollback(request)
        case let name?:
            guard let section = ConfigDocument.Section(rawValue: name) else {
                return .error(404, "not found: /v1/config, /v1/config/versions, /v1/config/rollback, or /v1/{routes,upstreams,keysets,apikeys,plugins,scripts}/{name}")
            }
            if path.count == 1 {
                guard request.method == .GET || request.method == .HEAD else { return .methodNotAllowed(["GET", "HEAD"]) }
                return await list(section)
            }
            // A script's name is a path (`lib/util.lua`); the other entities' names are one segment.
            guard section == .scripts || path.count == 2 else { return .error(404, "not found: \(section.rawValue) names have no \"/\"") }
            let entity = path.dropFirst().joined(separator: "/")
            switch request.method {
            case .GET, .HEAD: return await read(section, entity)
            case .PUT: return await put(section, entity, request)
            case .DELETE: return await delete(section, entity, request)
            default: return .methodNotAllowed(["GET", "HEAD", "PUT", "DELETE"])
            }
        default:
            return .error(404, "not found: /v1/config, /v1/config/versions, /v1/config/rollback, or /v1/{routes,upstreams,keysets,apikeys,plugins,scripts}/{name}")
        }
    }

    // MARK: Reads

    /// The running document and its version tag (a store version, or a file's digest).
    private func running() async -> Result<(document: ConfigDocument, etag: String), AdminFailure> {
        if let plane {
            let snapshot = await plane.snapshot()
            return .success((snapshot.document, String(snapshot.version)))
        }
        do {
            let document = try await gateway.runningDocument()
            return .success((document, document.digest))
        } catch {
            return .failure(AdminFailure(.error(500, "cannot read the configuration: \(error)")))
        }
    }

    private func readConfig() async -> AdminResponse {
        switch await running() {
        case .success(let (document, etag)): return .json(200, document.json, etag: etag)
        case .failure(let failure): return failure.response
        }
    }

    private func list(_ section: ConfigDocument.Section) async -> AdminResponse {
        switch await running() {
        case .success(let (document, etag)):
            let items = document.names(section).map { name in JSONValue.object(["name": .string(name), "value": document.entity(section, name) ?? .null]) }
            return .json(200, .object([section.rawValue: .array(items)]), etag: etag)
        case .failure(let failure): return failure.response
        }
    }

    private func read(_ section: ConfigDocument.Section, _ name: String) async -> AdminResponse {
        switch await running() {
        case .success(let (document, etag)):
            guard let value = document.entity(section, name) else { return .error(404, "no \(section.rawValue) named \"\(name)\"") }
            if section == .scripts {
                var response = AdminResponse(status: 200, contentType: "text/x-lua; charset=utf-8", body: value.stringValue ?? "")
                response.headers.append(("ETag", "\"\(etag)\""))
                return response
            }
            return .json(200, value, etag: etag)
        case .failure(let failure): return failure.response
        }
    }

    private func versions(_ request: AdminRequest) async -> AdminResponse {
        var limit = 100
        if let text = request.query["limit"] {
            guard let n = Int(text), (1...Self.maxVersions).contains(n) else { return .error(400, "limit: expected an integer from 1 to \(Self.maxVersions)") }
            limit = n
        }
        guard let plane else { return readOnly() }
        do {
            let rows = try await plane.versions(limit: limit)
            let items = rows.map { row in
                JSONValue.object([
                    "version": .int(row.version), "time": .string(row.time.formatted(.iso8601)), "token": .string(row.tokenID),
                    "summary": .string(row.summary),
                ])
            }
            return .json(200, .object(["versions": .array(items)]))
        } catch {
            return unavailable(PostgresConfigStore.describe(error))
        }
    }

    // MARK: Writes

    private func replaceConfig(_ request: AdminRequest) async -> AdminResponse {
        let document: ConfigDocument
        let body = request.body
        // A whole configuration is large: read it off the actors' threads, as a reload does.
        guard let parsed = try? await BackgroundWork.run({ Self.parseDocument(body) }) else { return .error(500, "cannot start a thread") }
        switch parsed {
        case .success(let d): document = d
        case .failure(let failure): return failure.response
        }
        if request.dryRun { return await dryRun { _ in document } }
        guard let precondition = request.ifMatch else {
            return .error(428, "PUT /v1/config replaces the whole configuration: send If-Match with the ETag of the version it replaces")
        }
        return await write(precondition, summary: nil) { _ in document }
    }

    private func put(_ section: ConfigDocument.Section, _ name: String, _ request: AdminRequest) async -> AdminResponse {
        guard !name.isEmpty, name.utf8.count <= 256 else { return .error(400, "a name is 1 to 256 bytes") }
        let value: JSONValue
        if section == .scripts {
            guard let source = String(validating: request.body, as: UTF8.self) else { return .error(400, "a script must be UTF-8 text") }
            guard name.hasSuffix(".lua") else { return .error(400, "a script's path ends in .lua") }
            value = .string(source)
        } else {
            switch JSONValue.parse(request.body) {
            case .success(let v): value = v
            case .failure(let error): return .error(400, error.message)
            }
        }
        let change: @Sendable (ConfigDocument) -> ConfigDocument = { document in
            var document = document
            document.put(section, name, value)
            return document
        }
        if request.dryRun { return await dryRun(change) }
        return await write(request.ifMatch, summary: nil, change)
    }

    private func delete(_ section: ConfigDocument.Section, _ name: String, _ request: AdminRequest) async -> AdminResponse {
        switch await running() {
        case .success(let (document, _)):
            guard document.entity(section, name) != nil else { return .error(404, "no \(section.rawValue) named \"\(name)\"") }
        case .failure(let failure): return failure.response
        }
        let change: @Sendable (ConfigDocument) -> ConfigDocument = { document in
            var document = document
            _ = document.delete(section, name)
            return document
        }
        if request.dryRun { return await dryRun(change) }
        return await write(request.ifMatch, summary: nil, change)
    }

    private func rollback(_ request: AdminRequest) async -> AdminResponse {
        guard case .success(let body) = JSONValue.parse(request.body), case .int(let version)? = body["version"], version > 0 else {
            return .error(400, "expected {\"version\": N}, a version from GET /v1/config/versions")
        }
        guard let plane else { return readOnly() }
        let stored: StoredConfig?
        do {
            stored = try await plane.read(version: version)
        } catch {
            return unavailable(PostgresConfigStore.describe(error))
        }
        guard let stored else { return .error(404, "no version \(version)") }
        return await write(request.ifMatch, summary: "rollback to version \(version)") { _ in stored.document }
    }

    /// Validates what `change` makes of the running document, as a write would, and says what
    /// it would change.
    private func dryRun(_ change: @Sendable (ConfigDocument) -> ConfigDocument) async -> AdminResponse {
        switch await running() {
        case .success(let (current, etag)):
            let next = change(current)
            let problems = await gateway.check(next)
            if !problems.isEmpty { return .problems(problems) }
            let changes = next.changes(from: current)
            return .json(200, .object(["dry_run": .bool(true), "valid": .bool(true), "base": .string(etag), "changes": .array(changes.map(\.json))]))
        case .failure(let failure):
            return failure.response
        }
    }

    private func write(
        _ precondition: AdminRequest.Precondition?, summary: String?, _ change: @escaping @Sendable (ConfigDocument) -> ConfigDocument
    ) async -> AdminResponse {
        guard let plane else { return readOnly() }
        var expected: Int?
        switch precondition {
        case .tag(let tag)?:
            guard let version = Int(tag) else { return .error(412, "If-Match \"\(tag)\" is not a version of this store", ["version": .int(await plane.snapshot().version)]) }
            expected = version
        case .any?, nil:
            expected = nil
        }
        switch await plane.write(expected: expected, tokenID: token, summary: summary, change) {
        case .applied(let version, let changes):
            return .json(200, .object(["version": .int(version), "changes": .array(changes.map(\.json))]), etag: String(version))
        case .stale(let latest):
            return .error(412, "the configuration changed since version \(expected ?? 0): read it again (GET /v1/config) and retry", ["version": .int(latest)])
        case .invalid(let problems):
            return .problems(problems)
        case .unavailable(let reason):
            return unavailable(reason)
        case .writtenNotApplied(let version, let problems):
            return .json(
                500, .object(["error": .string("written as version \(version) but this gateway refused it"), "version": .int(version), "errors": .array(problems.map(\.json))]))
        }
    }

    private func readOnly() -> AdminResponse {
        .error(
            409, "the configuration is the file \(gateway.configPath) (store.kind: file): edit it, or use store.kind: postgres to write through the API",
            ["source": .string(gateway.configPath)])
    }

    private func unavailable(_ reason: String) -> AdminResponse {
        var response = AdminResponse.error(503, "the config store cannot be reached; the last good configuration keeps serving (\(reason))")
        response.headers.append(("Retry-After", "1"))
        return response
    }

    static func parseDocument(_ body: [UInt8]) -> Result<ConfigDocument, AdminFailure> {
        switch JSONValue.parse(body) {
        case .failure(let error): return .failure(AdminFailure(.error(400, error.message)))
        case .success(let json):
            do {
                return .success(try ConfigDocument(json: json))
            } catch {
                return .failure(AdminFailure(.problems(error.diagnostics.map { ConfigProblem(pointer: $0.pointer, message: $0.message) })))
            }
        }
    }
}

/// An answer that ends a request early.
struct AdminFailure: Error {
    let response: AdminResponse
    init(_ response: AdminResponse) { self.response = response }
}
