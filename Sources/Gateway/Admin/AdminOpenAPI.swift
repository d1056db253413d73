import Config

/// `GET /openapi.json`: the admin API in OpenAPI 3.1, built here beside the API it describes.
/// Kept true by schemathesis in `scripts/test` (every answer must be one this document lists,
/// in its schema) and by `AdminAPITests`.
enum AdminOpenAPI {
    static let document: String = spec.prettyText + "\n"

    private static func ref(_ name: String) -> JSONValue { .object(["$ref": .string("#/components/schemas/\(name)")]) }
    private static let object: JSONValue = .object(["type": "object"])
    private static let string: JSONValue = .object(["type": "string"])
    private static let integer: JSONValue = .object(["type": "integer"])

    private static func response(_ description: String, _ schema: JSONValue? = nil, type: String = "application/json", etag: Bool = false) -> JSONValue {
        var out: [String: JSONValue] = ["description": .string(description)]
        if let schema { out["content"] = .object([type: .object(["schema": schema])]) }
        if etag {
            out["headers"] = .object([
                "ETag": .object(["description": "The configuration's version: a store version, or a digest of the file's", "schema": string])
            ])
        }
        return .object(out)
    }

    private static func error(_ description: String) -> JSONValue { response(description, ref("Error")) }

    /// What any `/v1` operation may answer besides its own.
    private static let common: [String: JSONValue] = [
        "400": error("Bad request: not JSON, a bad % escape or a bad parameter"),
        "401": .object(["$ref": "#/components/responses/Unauthorized"]),
        "413": error("The body is larger than 16 MiB"),
    ]

    /// What a write may answer.
    private static func writes(_ ok: JSONValue) -> [String: JSONValue] {
        [
            "200": ok,
            "409": error("The configuration is a file (store.kind: file): change the file"),
            "412": error("If-Match names a version that is no longer the latest"),
            "422": response("The configuration does not validate; nothing changed", ref("Problems")),
            "500": error("Written to the store, but this gateway refused it"),
            "503": error("The config store cannot be reached; the last good configuration keeps serving"),
        ]
    }

    private static let dryRun: JSONValue = .object([
        "name": "dry_run", "in": "query", "required": .bool(false), "description": "Validate and return the changes, write nothing",
        "schema": .object(["type": "boolean"]),
    ])

    private static let ifMatch: JSONValue = .object([
        "name": "If-Match", "in": "header", "required": .bool(false), "description": "The ETag of the version the write is based on (or *)",
        "schema": string,
    ])

    private static let bearer: JSONValue = .array([.object(["bearer": .array([])])])

    private static func operation(_ id: String, _ summary: String, parameters: [JSONValue] = [], body: JSONValue? = nil, _ responses: [String: JSONValue])
        -> JSONValue
    {
        var out: [String: JSONValue] = ["operationId": .string(id), "summary": .string(summary), "responses": .object(responses)]
        if id != "healthz" && id != "readyz" && id != "status" && id != "metrics" && id != "openapi" { out["security"] = bearer }
        if !parameters.isEmpty { out["parameters"] = .array(parameters) }
        if let body { out["requestBody"] = body }
        return .object(out)
    }

    private static func entityPaths(_ section: ConfigDocument.Section, _ schema: JSONValue, _ what: String) -> [String: JSONValue] {
        let name = section == .scripts ? "path" : "name"
        let isScript = section == .scripts
        let parameter: JSONValue = .object([
            "name": .string(name), "in": "path", "required": .bool(true), "schema": .object(["type": "string", "minLength": .int(1)]),
        ])
        let body: JSONValue = .object([
            "required": .bool(true),
            "content": isScript ? .object(["text/x-lua": .object(["schema": string])]) : .object(["application/json": .object(["schema": schema])]),
        ])
        let written = response("Written, or with dry_run validated (the changes)", .object(["oneOf": .array([ref("WriteResult"), ref("DryRun")])]), etag: true)
        let listItem: JSONValue = .object([
            "type": "object", "required": .array(["name", "value"]), "properties": .object(["name": string, "value": .object([:])]),
        ])
        let list: JSONValue = .object([
            "type": "object", "required": .array([.string(section.rawValue)]),
            "properties": .object([section.rawValue: .object(["type": "array", "items": listItem])]),
        ])
        let s = section.rawValue
        let unreadable = error("The configuration file cannot be read")
        let notFound = error("No such entity")
        return [
            "/v1/\(s)": .object([
                "get": operation("list_\(s)", "Every one of the \(s)", common.merging(["200": response("The \(s)", list, etag: true), "500": unreadable]) { $1 })
            ]),
            "/v1/\(s)/{\(name)}": .object([
                "parameters": .array([parameter]),
                "get": operation(
                    "get_\(s)", "Read \(what)",
                    common.merging([
                        "200": response(what, isScript ? string : schema, type: isScript ? "text/x-lua; charset=utf-8" : "application/json", etag: true),
                        "404": notFound, "500": unreadable,
                    ]) { $1 }),
                "put": operation(
                    "put_\(s)", "Add or replace \(what)", parameters: [dryRun, ifMatch], body: body, common.merging(writes(written)) { $1 }),
                "delete": operation(
                    "delete_\(s)", "Remove \(what)", parameters: [dryRun, ifMatch],
                    common.merging(writes(written)) { $1 }.merging(["404": notFound]) { $1 }),
            ]),
        ]
    }

    static var spec: JSONValue {
        let change: JSONValue = .object([
            "type": "object", "required": .array(["section", "name", "change"]),
            "properties": .object([
                "section": .object(["enum": .array(ConfigDocument.Section.allCases.map { .string($0.rawValue) })]), "name": string,
                "change": .object(["enum": .array(["added", "removed", "changed"])]),
            ]),
        ])
        let changes: JSONValue = .object(["type": "array", "items": ref("Change")])
        let problem: JSONValue = .object([
            "type": "object", "required": .array(["path", "message"]),
            "properties": .object(["path": .object(["type": "string", "description": "A JSON pointer into the document"]), "message": string]),
        ])
        let namedObjects: JSONValue = .object(["type": "object", "additionalProperties": object])
        let schemas: [String: JSONValue] = [
            "Error": .object([
                "type": "object", "required": .array(["error"]),
                "properties": .object(["error": string, "version": integer, "source": string, "errors": .object(["type": "array", "items": ref("Problem")])]),
            ]),
            "Problem": problem,
            "Problems": .object(["type": "object", "required": .array(["errors"]), "properties": .object(["errors": .object(["type": "array", "items": ref("Problem")])])]),
            "Change": change,
            "WriteResult": .object(["type": "object", "required": .array(["version", "changes"]), "properties": .object(["version": integer, "changes": changes])]),
            "DryRun": .object([
                "type": "object", "required": .array(["dry_run", "valid", "base", "changes"]),
                "properties": .object(["dry_run": .object(["const": .bool(true)]), "valid": .object(["type": "boolean"]), "base": string, "changes": changes]),
            ]),
            "Versions": .object([
                "type": "object", "required": .array(["versions"]),
                "properties": .object([
                    "versions": .object([
                        "type": "array",
                        "items": .object([
                            "type": "object", "required": .array(["version", "time", "token", "summary"]),
                            "properties": .object([
                                "version": integer, "time": .object(["type": "string", "format": "date-time"]), "token": string, "summary": string,
                            ]),
                        ]),
                    ])
                ]),
            ]),
            "Readiness": .object([
                "type": "object", "required": .array(["status", "store"]), "properties": .object(["status": string, "reason": string, "store": object]),
            ]),
            "Route": .object([
                "type": "object", "description": "A route as the YAML file writes it",
                "properties": .object([
                    "name": string, "upstream": string, "policy": string, "strip_prefix": .object(["type": "boolean"]),
                    "match": .object([
                        "type": "object",
                        "properties": .object([
                            "host": string, "path": string, "path_prefix": string, "methods": .object(["type": "array", "items": string]),
                        ]),
                    ]),
                ]),
            ]),
            "Plugin": .object([
                "type": "object", "description": "A plugin in the global chain: its name and its config, checked against the plugin's schema",
                "additionalProperties": .bool(false), "properties": .object(["name": string, "config": object]),
            ]),
            "Document": .object([
                "type": "object", "additionalProperties": .bool(false),
                "properties": .object([
                    "routes": .object(["type": "array", "items": ref("Route")]), "upstreams": namedObjects, "keysets": namedObjects,
                    "apikeys": namedObjects, "plugins": .object(["type": "array", "items": ref("Plugin")]),
                    "scripts": .object(["type": "object", "additionalProperties": string]),
                ]),
            ]),
        ]
        let written = response("Written, or with dry_run validated", .object(["oneOf": .array([ref("WriteResult"), ref("DryRun")])]), etag: true)
        var paths: [String: JSONValue] = [
            "/v1/config": .object([
                "get": operation("get_config", "The whole dynamic configuration", common.merging(["200": response("The configuration", ref("Document"), etag: true), "500": error("The configuration file cannot be read")]) { $1 }),
                "put": operation(
                    "put_config", "Replace the whole dynamic configuration (If-Match required but for dry_run)", parameters: [dryRun, ifMatch],
                    body: .object(["required": .bool(true), "content": .object(["application/json": .object(["schema": ref("Document")])])]),
                    common.merging(writes(written)) { $1 }.merging(["428": error("If-Match is missing")]) { $1 }),
            ]),
            "/v1/config/versions": .object([
                "get": operation(
                    "get_versions", "The versions written, newest first",
                    parameters: [
                        .object([
                            "name": "limit", "in": "query", "required": .bool(false),
                            "schema": .object(["type": "integer", "minimum": .int(1), "maximum": .int(ConfigAPI.maxVersions)]),
                        ])
                    ],
                    common.merging([
                        "200": response("The versions", ref("Versions")), "409": error("The configuration is a file: it has no versions"),
                        "503": error("The config store cannot be reached"),
                    ]) { $1 })
            ]),
            "/v1/config/rollback": .object([
                "post": operation(
                    "rollback", "Write an earlier version again, as a new version", parameters: [ifMatch],
                    body: .object([
                        "required": .bool(true),
                        "content": .object([
                            "application/json": .object([
                                "schema": .object([
                                    "type": "object", "required": .array(["version"]),
                                    "properties": .object(["version": .object(["type": "integer", "minimum": .int(1)])]),
                                ])
                            ])
                        ]),
                    ]),
                    common.merging(writes(response("Written", ref("WriteResult"), etag: true))) { $1 }.merging(["404": error("No such version")]) { $1 })
            ]),
            "/healthz": .object(["get": operation("healthz", "The process answers", ["200": response("Alive", object)])]),
            "/readyz": .object([
                "get": operation(
                    "readyz", "Ready when a configuration is loaded and the gateway is not draining; the store's state",
                    ["200": response("Ready", ref("Readiness")), "503": response("Not ready", ref("Readiness"))])
            ]),
            "/status": .object(["get": operation("status", "Version, uptime, generation, the last reload, the store, targets", ["200": response("Status", object)])]),
            "/metrics": .object([
                "get": operation("metrics", "Prometheus text format", ["200": response("Metrics", string, type: "text/plain; version=0.0.4; charset=utf-8")])
            ]),
            "/openapi.json": .object(["get": operation("openapi", "This document", ["200": response("OpenAPI 3.1", object)])]),
        ]
        paths.merge(entityPaths(.routes, ref("Route"), "a route")) { $1 }
        paths.merge(entityPaths(.upstreams, object, "an upstream")) { $1 }
        paths.merge(entityPaths(.keysets, object, "a keyset")) { $1 }
        paths.merge(entityPaths(.apikeys, object, "an API key set")) { $1 }
        paths.merge(entityPaths(.plugins, ref("Plugin"), "a plugin of the global chain")) { $1 }
        paths.merge(entityPaths(.scripts, string, "a script's Lua source")) { $1 }
        return .object([
            "openapi": "3.1.0",
            "info": .object([
                "title": "Moongate admin API", "version": "1",
                "description":
                    "The dynamic configuration of a Moongate gateway (routes, upstreams, keysets, API key sets, the global plugin chain, Lua scripts): read, validate, write, versions and rollback. Every write is validated as the YAML file is, applied as one generation on every worker, and kept as a version in the config store. See docs/admin-api.md.",
            ]),
            "paths": .object(paths),
            "components": .object([
                "securitySchemes": .object([
                    "bearer": .object(["type": "http", "scheme": "bearer", "description": "A token from `moongate admin-token ID`; its digest goes in admin.token_file"])
                ]),
                "responses": .object([
                    "Unauthorized": .object([
                        "description": "A valid admin token is required",
                        "headers": .object(["WWW-Authenticate": .object(["schema": string])]),
                        "content": .object(["application/json": .object(["schema": ref("Error")])]),
                    ])
                ]),
                "schemas": .object(schemas),
            ]),
        ])
    }
}
