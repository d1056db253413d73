import YAML

/// Turns the YAML tree into a `GatewayConfig`, checking each field and the references
/// between them; problems go to the reader's diagnostics.
struct ConfigDecoder {
    let reader: YAMLReader

    private static let logLevels: Set<String> = ["trace", "debug", "info", "notice", "warning", "error", "critical"]
    private static let methodChars = Set("ABCDEFGHIJKLMNOPQRSTUVWXYZ")

    func decode(_ root: YAMLNode) -> GatewayConfig? {
        let r = reader
        guard
            let top = r.mapping(
                root, "",
                allowed: ["workers", "log_level", "log_format", "listeners", "admin", "limits", "timeouts", "upstreams", "routes", "scripts", "keysets", "apikeys", "redis", "rate_limit", "introspection", "metrics", "access_log",
                    "tracing", "store", "plugins", "kv",
                ])
        else { return nil }

        var workers: Int?
        if let node = top["workers"]?.value { workers = r.int(node, "workers", range: 1...1024) }
        var logLevel = "info"
        if let node = top["log_level"]?.value, let level = r.string(node, "log_level") {
            if Self.logLevels.contains(level) {
                logLevel = level
            } else {
                r.fail(node, "log_level", "unknown log level \"\(level)\" (expected one of: \(Self.logLevels.sorted().joined(separator: ", ")))")
            }
        }

        let listeners = top["listeners"].map { decodeListeners($0.value) } ?? []
        if top["listeners"] == nil { r.fail(root, "listeners", "at least one listener is required") }

        let (admin, adminTokenFile) = top["admin"].map { decodeAdmin($0.value) } ?? (nil, nil)

        let limits = top["limits"].map { decodeLimits($0.value) } ?? Limits()
        let timeouts = top["timeouts"].map { decodeTimeouts($0.value) } ?? Timeouts()
        let upstreams = top["upstreams"].map { decodeUpstreams($0.value) } ?? []
        let scripts = top["scripts"].map { decodeScripts($0.value) } ?? ScriptsConfig()
        let keysets = top["keysets"].map { decodeKeysets($0.value) } ?? []
        let apiKeys = top["apikeys"].map { decodeAPIKeys($0.value) } ?? []
        let redis = top["redis"].map { decodeRedis($0.value) } ?? []
        let rateLimit = decodeRateLimit(top["rate_limit"]?.value, redis: redis)
        let routes = top["routes"].map { decodeRoutes($0.value, upstreams: upstreams, scripts: scripts) } ?? []
        if top["routes"] == nil { r.fail(root, "routes", "at least one route is required") }

        var config = GatewayConfig(
            workers: workers, logLevel: logLevel, listeners: listeners, admin: admin, limits: limits,
            timeouts: timeouts, upstreams: upstreams, routes: routes, scripts: scripts, keysets: keysets, apiKeys: apiKeys,
            redis: redis, rateLimit: rateLimit, introspection: top["introspection"].map { decodeIntrospection($0.value) } ?? [])
        config.adminTokenFile = adminTokenFile
        if let node = top["log_format"]?.value, let format = r.string(node, "log_format") {
            if format == "json" || format == "text" { config.logFormat = format } else { r.fail(node, "log_format", "expected json or text, got \(JSONValue.quoted(format))") }
        }
        if let node = top["plugins"]?.value { config.plugins = decodePluginsSection(node) }
        config.kv = decodeKV(top["kv"]?.value, redis: redis)
        if let node = top["store"]?.value { config.store = decodeStore(node) }
        if let node = top["metrics"]?.value, let map = r.mapping(node, "metrics", allowed: ["enabled", "max_series"]) {
            if let n = map["enabled"]?.value, let v = r.bool(n, "metrics.enabled") { config.metrics.enabled = v }
            if let n = map["max_series"]?.value, let v = r.int(n, "metrics.max_series", range: 1...100_000) { config.metrics.maxSeries = v }
        }
        if let node = top["access_log"]?.value, let map = r.mapping(node, "access_log", allowed: ["to"]) {
            if let n = map["to"]?.value, let v = r.string(n, "access_log.to") {
                switch v {
                case "stdout": config.accessLog.destination = .stdout
                case "stderr": config.accessLog.destination = .stderr
                case "off": config.accessLog.destination = .off
                case "": r.fail(n, "access_log.to", "stdout, stderr, off or a file path")
                default: config.accessLog.destination = .file(v)
                }
            }
        }
        if let node = top["tracing"]?.value,
            let map = r.mapping(node, "tracing", allowed: ["endpoint", "service_name", "sample_ratio", "timeout", "ca_file", "protocol", "compression"])
        {
            if let n = map["endpoint"]?.value, let text = r.string(n, "tracing.endpoint") {
                if var endpoint = HTTPEndpoint(parsing: text) {
                    // A collector's base URL gets the standard traces path (OTEL_EXPORTER_OTLP_ENDPOINT's rule).
                    if endpoint.path == "/" { endpoint.path = "/v1/traces" }
                    if let c = map["ca_file"]?.value, let file = r.string(c, "tracing.ca_file") {
                        if endpoint.tls { endpoint.caFile = file } else { r.fail(c, "tracing.ca_file", "needs an https endpoint") }
                    }
                    config.tracing.endpoint = endpoint
                } else {
                    r.fail(n, "tracing.endpoint", "expected http[s]://host[:port][/path] of an OTLP/HTTP collector")
                }
            } else {
                r.fail(node, "tracing.endpoint", "required (the OTLP/HTTP collector, e.g. http://127.0.0.1:4318)")
            }
            if let n = map["service_name"]?.value, let v = r.string(n, "tracing.service_name") {
                if v.isEmpty || v.utf8.count > 256 { r.fail(n, "tracing.service_name", "1 to 256 characters") } else { config.tracing.serviceName = v }
            }
            if let n = map["sample_ratio"]?.value, let text = r.string(n, "tracing.sample_ratio") {
                if let v = Double(text), v >= 0, v <= 1 { config.tracing.sampleRatio = v } else { r.fail(n, "tracing.sample_ratio", "expected a number from 0 to 1") }
            }
            if let n = map["timeout"]?.value, let v = positive(n, "tracing.timeout") { config.tracing.timeout = v }
            if let n = map["protocol"]?.value, let v = r.string(n, "tracing.protocol") {
                if let e = TracingConfig.Encoding(rawValue: v) { config.tracing.encoding = e } else { r.fail(n, "tracing.protocol", "expected http/protobuf or http/json") }
            }
            if let n = map["compression"]?.value, let v = r.string(n, "tracing.compression") {
                switch v {
                case "gzip": config.tracing.gzip = true
                case "none": config.tracing.gzip = false
                default: r.fail(n, "tracing.compression", "expected gzip or none")
                }
            }
        }
        return config
    }

    private func decodeAPIKeys(_ node: YAMLNode) -> [APIKeySet] {
        let r = reader
        guard case .mapping(let mapping) = node else {
            r.fail(node, "apikeys", "expected a mapping of key set names to their keys")
            return []
        }
        var out: [APIKeySet] = []
        for (key, value) in mapping {
            guard let name = r.string(key, "apikeys") else { continue }
            let path = r.join("apikeys", name)
            guard let map = r.mapping(value, path, allowed: ["keys", "keys_file"]) else { continue }
            var entries: [APIKeySet.Entry] = []
            if let k = map["keys"]?.value, let list = r.sequence(k, r.join(path, "keys")) {
                for (i, item) in list.enumerated() {
                    let itemPath = r.join(r.join(path, "keys"), i)
                    guard let entry = r.mapping(item, itemPath, allowed: ["sha256", "consumer", "scopes"]) else { continue }
                    guard let hexNode = entry["sha256"]?.value, let hex = r.string(hexNode, r.join(itemPath, "sha256")) else {
                        r.fail(item, r.join(itemPath, "sha256"), "required: the key's SHA-256 in hex (keys themselves are never stored)")
                        continue
                    }
                    guard let digest = APIKeySet.digest(hex: hex) else {
                        r.fail(hexNode, r.join(itemPath, "sha256"), "expected 64 hex digits")
                        continue
                    }
                    let consumer = entry["consumer"].flatMap { r.string($0.value, r.join(itemPath, "consumer")) } ?? ""
                    var scopes: [String] = []
                    if let s = entry["scopes"]?.value, let list = r.sequence(s, r.join(itemPath, "scopes")) {
                        scopes = list.enumerated().compactMap { r.string($0.element, r.join(r.join(itemPath, "scopes"), $0.offset)) }
                    }
                    entries.append(APIKeySet.Entry(digest: digest, consumer: consumer, scopes: scopes))
                }
            }
            let file = map["keys_file"].flatMap { r.string($0.value, r.join(path, "keys_file")) }
            if entries.isEmpty, file == nil { r.fail(value, path, "no keys: give keys or keys_file") }
            out.append(APIKeySet(name: name, keys: entries, file: file))
        }
        return out
    }

    static let algorithms: Set<String> = [
        "HS256", "HS384", "HS512", "RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384", "ES512", "EdDSA",
    ]

    private func decodeKeysets(_ node: YAMLNode) -> [Keyset] {
        let r = reader
        guard case .mapping(let mapping) = node else {
            r.fail(node, "keysets", "expected a mapping of keyset names to their keys")
            return []
        }
        var out: [Keyset] = []
        for (key, value) in mapping {
            guard let name = r.string(key, "keysets") else { continue }
            let path = r.join("keysets", name)
            guard
                let map = r.mapping(
                    value, path,
                    allowed: [
                        "algorithms", "secret", "secret_file", "keys", "jwks_file", "issuer", "audience", "leeway", "max_age",
                        "required_claims", "cache_entries", "jwks_url", "jwks_refresh", "jwks_min_refetch", "jwks_ca_file",
                    ])
            else { continue }
            var algorithms: [String] = []
            if let a = map["algorithms"]?.value, let list = r.sequence(a, r.join(path, "algorithms")) {
                for (i, item) in list.enumerated() {
                    guard let alg = r.string(item, r.join(r.join(path, "algorithms"), i)) else { continue }
                    if alg.lowercased() == "none" {
                        r.fail(item, r.join(r.join(path, "algorithms"), i), "alg \"none\" is never allowed")
                    } else if !Self.algorithms.contains(alg) {
                        r.fail(item, r.join(r.join(path, "algorithms"), i), "unknown algorithm \"\(alg)\" (expected one of \(Self.algorithms.sorted().joined(separator: ", ")))")
                    } else {
                        algorithms.append(alg)
                    }
                }
            } else if map["algorithms"] == nil {
                r.fail(value, r.join(path, "algorithms"), "required (the algorithms this keyset's tokens may use)")
            }
            var keys: [KeySource] = []
            if let n = map["secret"]?.value, let v = r.string(n, r.join(path, "secret")) { keys.append(KeySource(kid: nil, kind: .secret, value: v, file: nil)) }
            if let n = map["secret_file"]?.value, let v = r.string(n, r.join(path, "secret_file")) {
                keys.append(KeySource(kid: nil, kind: .secret, value: nil, file: v))
            }
            if let k = map["keys"]?.value, let list = r.sequence(k, r.join(path, "keys")) {
                for (i, item) in list.enumerated() {
                    let keyPath = r.join(r.join(path, "keys"), i)
                    guard let entry = r.mapping(item, keyPath, allowed: ["kid", "secret", "secret_file", "pem", "pem_file"]) else { continue }
                    let kid = entry["kid"].flatMap { r.string($0.value, r.join(keyPath, "kid")) }
                    let given = ["secret", "secret_file", "pem", "pem_file"].filter { entry[$0] != nil }
                    guard given.count == 1, let field = given.first, let v = r.string(entry[field]!.value, r.join(keyPath, field)) else {
                        r.fail(item, keyPath, "give exactly one of secret, secret_file, pem, pem_file")
                        continue
                    }
                    let kind: KeySource.Kind = field.hasPrefix("secret") ? .secret : .pem
                    let isFile = field.hasSuffix("_file")
                    keys.append(KeySource(kid: kid, kind: kind, value: isFile ? nil : v, file: isFile ? v : nil))
                }
            }
            var keyset = Keyset(name: name, algorithms: algorithms, keys: keys)
            if let n = map["jwks_file"]?.value { keyset.jwksFile = r.string(n, r.join(path, "jwks_file")) }
            if let n = map["jwks_url"]?.value, let text = r.string(n, r.join(path, "jwks_url")) {
                if let url = JWKSURL(parsing: text) {
                    keyset.jwksURL = url
                } else {
                    r.fail(n, r.join(path, "jwks_url"), "expected https://host[:port]/path (or http:// on a trusted network)")
                }
            }
            if let n = map["jwks_ca_file"]?.value, let file = r.string(n, r.join(path, "jwks_ca_file")) {
                if keyset.jwksURL?.endpoint.tls == true {
                    keyset.jwksURL?.endpoint.caFile = file
                } else {
                    r.fail(n, r.join(path, "jwks_ca_file"), "needs an https jwks_url")
                }
            }
            if let n = map["jwks_refresh"]?.value, let v = positive(n, r.join(path, "jwks_refresh")) { keyset.jwksURL?.refresh = v }
            if let n = map["jwks_min_refetch"]?.value, let v = r.duration(n, r.join(path, "jwks_min_refetch")) { keyset.jwksURL?.minRefetch = v }
            if keys.isEmpty, keyset.jwksFile == nil, map["jwks_url"] == nil {
                r.fail(value, path, "no keys: give secret, secret_file, keys, jwks_file or jwks_url")
            }
            if let n = map["issuer"]?.value { keyset.issuer = r.string(n, r.join(path, "issuer")) }
            if let n = map["audience"]?.value {
                if case .scalar = n {
                    keyset.audience = r.string(n, r.join(path, "audience")).map { [$0] } ?? []
                } else if let list = r.sequence(n, r.join(path, "audience")) {
                    keyset.audience = list.enumerated().compactMap { r.string($0.element, r.join(r.join(path, "audience"), $0.offset)) }
                }
            }
            if let n = map["leeway"]?.value, let v = r.duration(n, r.join(path, "leeway")) { keyset.leeway = v }
            if let n = map["max_age"]?.value, let v = positive(n, r.join(path, "max_age")) { keyset.maxAge = v }
            if let n = map["cache_entries"]?.value, let v = r.int(n, r.join(path, "cache_entries"), range: 0...1_000_000) { keyset.cacheEntries = v }
            if let n = map["required_claims"]?.value, let list = r.sequence(n, r.join(path, "required_claims")) {
                keyset.requiredClaims = list.enumerated().compactMap { r.string($0.element, r.join(r.join(path, "required_claims"), $0.offset)) }
            }
            out.append(keyset)
        }
        return out
    }

    private func decodeScripts(_ node: YAMLNode) -> ScriptsConfig {
        let r = reader
        var scripts = ScriptsConfig()
        guard let map = r.mapping(node, "scripts", allowed: ["dir", "max_states", "pool_wait", "budget"]) else { return scripts }
        if let n = map["dir"]?.value, let v = r.string(n, "scripts.dir") {
            if v.isEmpty { r.fail(n, "scripts.dir", "must not be empty") } else { scripts.directory = v }
        }
        if let n = map["max_states"]?.value, let v = r.int(n, "scripts.max_states", range: 1...10_000) { scripts.maxStates = v }
        if let n = map["pool_wait"]?.value, let v = r.duration(n, "scripts.pool_wait") { scripts.poolWait = v }
        if let n = map["budget"]?.value { scripts.budget = decodeBudget(n, "scripts.budget", base: ScriptBudget()) }
        return scripts
    }

    private func decodeBudget(_ node: YAMLNode, _ path: String, base: ScriptBudget) -> ScriptBudget {
        let r = reader
        var budget = base
        guard let map = r.mapping(node, path, allowed: ["instructions", "time", "memory", "depth", "coroutines"]) else { return budget }
        if let n = map["instructions"]?.value, let v = r.int(n, r.join(path, "instructions"), range: 1000...1_000_000_000_000) {
            budget.instructions = v
        }
        if let n = map["time"]?.value, let v = positive(n, r.join(path, "time")) { budget.time = v }
        if let n = map["memory"]?.value, let v = r.size(n, r.join(path, "memory")) {
            if v < 64 * 1024 { r.fail(n, r.join(path, "memory"), "must be at least 64KB") } else { budget.memory = v }
        }
        if let n = map["depth"]?.value, let v = r.int(n, r.join(path, "depth"), range: 10...10_000) { budget.depth = v }
        if let n = map["coroutines"]?.value, let v = r.int(n, r.join(path, "coroutines"), range: 0...10_000) { budget.coroutines = v }
        return budget
    }

    /// `auth.lua`, `auth` or `lib/auth.lua` → the module name `auth` / `lib.auth`.
    private func policyModule(_ node: YAMLNode, _ path: String) -> String? {
        guard var name = reader.string(node, path) else { return nil }
        if name.hasSuffix(".lua") { name.removeLast(4) }
        let segments = name.split(separator: "/", omittingEmptySubsequences: false)
        let valid = !segments.isEmpty && segments.allSatisfy { seg in
            guard let first = seg.first, first == "_" || first.isLetter, first.isASCII else { return false }
            return seg.allSatisfy { $0.isASCII && ($0.isLetter || $0.isNumber || $0 == "_") }
        }
        guard valid else {
            reader.fail(node, path, "invalid policy \"\(name)\" (expected a script in the scripts directory, such as auth.lua)")
            return nil
        }
        let module = segments.joined(separator: ".")
        reader.scriptReferences.append(ScriptReference(module: module, line: node.mark?.line ?? 0, path: path, pointer: reader.pointer(path)))
        return module
    }

    private func decodeListeners(_ node: YAMLNode) -> [Listener] {
        let r = reader
        guard let items = r.sequence(node, "listeners") else { return [] }
        if items.isEmpty { r.fail(node, "listeners", "at least one listener is required") }
        var out: [Listener] = []
        var seenAddresses: Set<SocketAddressSpec> = []
        var seenNames: Set<String> = []
        for (i, item) in items.enumerated() {
            let path = r.join("listeners", i)
            guard let map = r.mapping(item, path, allowed: ["name", "address", "router", "tls", "h2c", "http2"]) else { continue }
            guard let addressNode = map["address"]?.value else {
                r.fail(item, r.join(path, "address"), "required")
                continue
            }
            guard let address = r.address(addressNode, r.join(path, "address")) else { continue }
            let name = map["name"].flatMap { r.string($0.value, r.join(path, "name")) } ?? address.description
            if !seenAddresses.insert(address).inserted {
                r.fail(addressNode, r.join(path, "address"), "address \(address) is already used by another listener")
            }
            if !seenNames.insert(name).inserted {
                r.fail(item, r.join(path, "name"), "duplicate listener name \"\(name)\"")
            }
            let router = map["router"].flatMap { policyModule($0.value, r.join(path, "router")) }
            let tls = map["tls"].flatMap { decodeListenerTLS($0.value, r.join(path, "tls")) }
            let h2c = map["h2c"].flatMap { r.bool($0.value, r.join(path, "h2c")) } ?? false
            let http2 = map["http2"].flatMap { r.bool($0.value, r.join(path, "http2")) } ?? true
            if h2c, map["tls"] != nil, let n = map["h2c"]?.value {
                r.fail(n, r.join(path, "h2c"), "h2c is HTTP/2 without TLS; a TLS listener offers h2 through ALPN (http2: false turns it off)")
            }
            if map["http2"] != nil, map["tls"] == nil, let n = map["http2"]?.value {
                r.fail(n, r.join(path, "http2"), "http2 is a TLS listener's ALPN offer; a cleartext listener serves HTTP/2 with h2c: true")
            }
            out.append(Listener(name: name, address: address, router: router, tls: tls, h2c: h2c, http2: http2))
        }
        return out
    }

    /// `tls: {certificates: [{cert, key}], min_version: "1.2" | "1.3"}`.
    private func decodeListenerTLS(_ node: YAMLNode, _ path: String) -> ListenerTLS? {
        let r = reader
        guard let map = r.mapping(node, path, allowed: ["certificates", "min_version", "handshake_timeout", "max_handshakes", "client_ca", "client_auth", "session_tickets"]) else {
            return nil
        }
        var tls = ListenerTLS(certificates: [])
        tls.place = LocatedValue(.null, file: r.file, line: node.mark?.line ?? 0, path: path, pointer: r.pointer(path))
        if let n = map["client_ca"]?.value, let file = r.string(n, r.join(path, "client_ca")) { tls.clientCA = file }
        if let n = map["client_auth"]?.value, let text = r.string(n, r.join(path, "client_auth")) {
            switch text {
            case "required": tls.clientAuthRequired = true
            case "optional": tls.clientAuthRequired = false
            default: r.fail(n, r.join(path, "client_auth"), "expected required or optional, got \(JSONValue.quoted(text))")
            }
            if tls.clientCA == nil { r.fail(n, r.join(path, "client_auth"), "client_auth needs client_ca (the CAs client certificates chain to)") }
        }
        let listPath = r.join(path, "certificates")
        if let list = map["certificates"]?.value, let items = r.sequence(list, listPath) {
            for (i, item) in items.enumerated() {
                let itemPath = r.join(listPath, i)
                guard let entry = r.mapping(item, itemPath, allowed: ["cert", "key"]) else { continue }
                guard let certNode = entry["cert"]?.value, let keyNode = entry["key"]?.value else {
                    r.fail(item, itemPath, "a certificate needs cert (a PEM chain) and key (its PEM private key)")
                    continue
                }
                guard let cert = r.string(certNode, r.join(itemPath, "cert")), let key = r.string(keyNode, r.join(itemPath, "key")) else { continue }
                let place = LocatedValue(.null, file: r.file, line: item.mark?.line ?? 0, path: itemPath, pointer: r.pointer(itemPath))
                tls.certificates.append(ListenerTLS.Certificate(cert: cert, key: key, place: place))
            }
            if items.isEmpty { r.fail(list, listPath, "at least one certificate is required") }
        } else if map["certificates"] == nil {
            r.fail(node, listPath, "required: the listener's certificates ([{cert, key}], chosen by SNI; the first is the default)")
        }
        if let n = map["min_version"]?.value, let text = r.string(n, r.join(path, "min_version")) {
            switch text {
            case "1.2": tls.minVersion = 12
            case "1.3": tls.minVersion = 13
            default: r.fail(n, r.join(path, "min_version"), "expected \"1.2\" or \"1.3\" (older versions are not offered), got \(JSONValue.quoted(text))")
            }
        }
        if let n = map["handshake_timeout"]?.value, let v = positive(n, r.join(path, "handshake_timeout")) { tls.handshakeTimeout = v }
        if let n = map["max_handshakes"]?.value, let v = r.int(n, r.join(path, "max_handshakes"), range: 1...1_000_000) { tls.maxHandshakes = v }
        if let n = map["session_tickets"]?.value, let v = r.bool(n, r.join(path, "session_tickets")) { tls.sessionTickets = v }
        return tls
    }

    private func decodeLimits(_ node: YAMLNode) -> Limits {
        let r = reader
        var limits = Limits()
        guard let map = r.mapping(node, "limits", allowed: ["max_header_bytes", "max_headers", "max_uri_bytes", "max_body_bytes", "max_connections", "max_concurrent_streams"]) else {
            return limits
        }
        if let n = map["max_header_bytes"]?.value, let v = r.size(n, "limits.max_header_bytes") {
            if v < 256 || v > 1 << 20 { r.fail(n, "limits.max_header_bytes", "must be between 256 and 1MB") } else { limits.maxHeaderBytes = v }
        }
        if let n = map["max_headers"]?.value, let v = r.int(n, "limits.max_headers", range: 1...10_000) { limits.maxHeaderCount = v }
        if let n = map["max_uri_bytes"]?.value, let v = r.size(n, "limits.max_uri_bytes") {
            if v < 16 { r.fail(n, "limits.max_uri_bytes", "must be at least 16") } else { limits.maxURIBytes = v }
        }
        if let n = map["max_body_bytes"]?.value, let v = r.size(n, "limits.max_body_bytes") { limits.maxBodyBytes = v }
        if let n = map["max_connections"]?.value, let v = r.int(n, "limits.max_connections", range: 1...10_000_000) { limits.maxConnections = v }
        if let n = map["max_concurrent_streams"]?.value, let v = r.int(n, "limits.max_concurrent_streams", range: 1...10_000) { limits.maxConcurrentStreams = v }
        return limits
    }

    private func decodeTimeouts(_ node: YAMLNode) -> Timeouts {
        let r = reader
        var timeouts = Timeouts()
        guard let map = r.mapping(node, "timeouts", allowed: ["client_idle", "request", "drain", "tunnel_idle"]) else { return timeouts }
        if let n = map["tunnel_idle"]?.value, let v = positive(n, "timeouts.tunnel_idle") { timeouts.tunnelIdle = v }
        if let n = map["client_idle"]?.value, let v = positive(n, "timeouts.client_idle") { timeouts.clientIdle = v }
        if let n = map["request"]?.value, let v = positive(n, "timeouts.request") { timeouts.request = v }
        if let n = map["drain"]?.value, let v = r.duration(n, "timeouts.drain") { timeouts.drain = v }
        return timeouts
    }

    func positive(_ node: YAMLNode, _ path: String) -> Duration? {
        guard let d = reader.duration(node, path) else { return nil }
        guard d > .zero else {
            reader.fail(node, path, "must be greater than zero")
            return nil
        }
        return d
    }

    private func decodeUpstreams(_ node: YAMLNode) -> [Upstream] {
        let r = reader
        guard case .mapping(let mapping) = node else {
            r.fail(node, "upstreams", "expected a mapping of upstream names to their settings")
            return []
        }
        var out: [Upstream] = []
        for (key, value) in mapping {
            guard let name = r.string(key, "upstreams") else { continue }
            let path = r.join("upstreams", name)
            if out.contains(where: { $0.name == name }) {
                r.fail(key, path, "duplicate upstream \"\(name)\"")
                continue
            }
            guard
                let map = r.mapping(
                    value, path,
                    allowed: [
                        "targets", "connect_timeout", "read_timeout", "pool", "balancer", "hash_key", "retries", "try_timeout", "retry_budget",
                        "passive_health", "circuit_breaker", "health_check", "tls", "protocol",
                    ])
            else { continue }
            var targets: [Upstream.Target] = []
            if let t = map["targets"]?.value, let items = r.sequence(t, r.join(path, "targets")) {
                if items.isEmpty { r.fail(t, r.join(path, "targets"), "at least one target is required") }
                for (i, item) in items.enumerated() {
                    if let target = decodeTarget(item, r.join(r.join(path, "targets"), i)) { targets.append(target) }
                }
            } else if map["targets"] == nil {
                r.fail(value, r.join(path, "targets"), "required")
            }
            var upstream = Upstream(name: name, targets: targets)
            if let n = map["connect_timeout"]?.value, let v = positive(n, r.join(path, "connect_timeout")) { upstream.connectTimeout = v }
            if let n = map["read_timeout"]?.value, let v = positive(n, r.join(path, "read_timeout")) { upstream.readTimeout = v }
            if let p = map["pool"]?.value,
                let pool = r.mapping(p, r.join(path, "pool"), allowed: ["max_idle", "idle_timeout", "max_connections", "queue", "queue_timeout"])
            {
                let poolPath = r.join(path, "pool")
                if let n = pool["max_idle"]?.value, let v = r.int(n, r.join(poolPath, "max_idle"), range: 0...100_000) {
                    upstream.maxIdleConnections = v
                }
                if let n = pool["idle_timeout"]?.value, let v = positive(n, r.join(poolPath, "idle_timeout")) { upstream.idleTimeout = v }
                if let n = pool["max_connections"]?.value, let v = r.int(n, r.join(poolPath, "max_connections"), range: 0...1_000_000) {
                    upstream.maxConnections = v
                }
                if let n = pool["queue"]?.value, let v = r.int(n, r.join(poolPath, "queue"), range: 0...1_000_000) { upstream.queue = v }
                if let n = pool["queue_timeout"]?.value, let v = positive(n, r.join(poolPath, "queue_timeout")) { upstream.queueTimeout = v }
            }
            decodeResilience(map, path, into: &upstream)
            if let n = map["tls"]?.value { upstream.tls = decodeUpstreamTLS(n, r.join(path, "tls")) }
            if let n = map["protocol"]?.value, let text = r.string(n, r.join(path, "protocol")) {
                switch text {
                case "http1", "http/1.1": upstream.h2 = false
                case "h2", "http2": upstream.h2 = true
                default: r.fail(n, r.join(path, "protocol"), "expected http1 or h2, got \"\(text)\"")
                }
            }
            out.append(upstream)
        }
        return out
    }

    /// `tls: {sni, ca_file, cert, key, verify, min_version}`, or `tls: true` for the defaults.
    func decodeUpstreamTLS(_ node: YAMLNode, _ path: String) -> UpstreamTLS? {
        let r = reader
        var tls = UpstreamTLS()
        tls.place = LocatedValue(.null, file: r.file, line: node.mark?.line ?? 0, path: path, pointer: r.pointer(path))
        if case .scalar = node {
            guard let on = r.bool(node, path) else { return nil }
            return on ? tls : nil
        }
        guard let map = r.mapping(node, path, allowed: ["sni", "ca_file", "cert", "key", "verify", "min_version"]) else { return nil }
        if let n = map["sni"]?.value, let v = r.string(n, r.join(path, "sni")) {
            if v.isEmpty || v.utf8.count > 253 || v.contains(where: { $0 == " " || $0 == "/" || $0 == ":" }) {
                r.fail(n, r.join(path, "sni"), "expected a DNS name, got \(JSONValue.quoted(v))")
            } else {
                tls.sni = v
            }
        }
        if let n = map["ca_file"]?.value, let v = r.string(n, r.join(path, "ca_file")) { tls.caFile = v }
        if let n = map["cert"]?.value, let v = r.string(n, r.join(path, "cert")) { tls.cert = v }
        if let n = map["key"]?.value, let v = r.string(n, r.join(path, "key")) { tls.key = v }
        if (tls.cert == nil) != (tls.key == nil) {
            r.fail(node, r.join(path, tls.cert == nil ? "cert" : "key"), "a client certificate needs both cert (a PEM chain) and key (its PEM private key)")
        }
        if let n = map["verify"]?.value, let v = r.bool(n, r.join(path, "verify")) { tls.verify = v }
        if let n = map["min_version"]?.value, let text = r.string(n, r.join(path, "min_version")) {
            switch text {
            case "1.2": tls.minVersion = 12
            case "1.3": tls.minVersion = 13
            default: r.fail(n, r.join(path, "min_version"), "expected \"1.2\" or \"1.3\" (older versions are not offered), got \(JSONValue.quoted(text))")
            }
        }
        return tls
    }

    private func decodeTarget(_ node: YAMLNode, _ path: String) -> Upstream.Target? {
        let r = reader
        if case .scalar = node {  // shorthand: "- 127.0.0.1:9000"
            return r.address(node, path).map { Upstream.Target(address: $0) }
        }
        guard let map = r.mapping(node, path, allowed: ["address", "weight"]) else { return nil }
        guard let a = map["address"]?.value else {
            r.fail(node, r.join(path, "address"), "required")
            return nil
        }
        guard let address = r.address(a, r.join(path, "address")) else { return nil }
        var weight = 1
        if let w = map["weight"]?.value, let v = r.int(w, r.join(path, "weight"), range: 1...1000) { weight = v }
        return Upstream.Target(address: address, weight: weight)
    }

    private func decodeRoutes(_ node: YAMLNode, upstreams: [Upstream], scripts: ScriptsConfig) -> [Route] {
        let r = reader
        guard let items = r.sequence(node, "routes") else { return [] }
        if items.isEmpty { r.fail(node, "routes", "at least one route is required") }
        var out: [Route] = []
        var names: Set<String> = []
        for (i, item) in items.enumerated() {
            let path = r.join("routes", i)
            guard
                let map = r.mapping(
                    item, path,
                    allowed: [
                        "name", "match", "upstream", "strip_prefix", "host_header", "max_body_bytes", "policy", "budget",
                        "rate_limit_failure", "retry_non_idempotent", "plugins", "upgrade",
                    ])
            else { continue }
            let name = map["name"].flatMap { r.string($0.value, r.join(path, "name")) } ?? "route\(i)"
            if !names.insert(name).inserted { r.fail(map["name"]?.value ?? item, r.join(path, "name"), "duplicate route name \"\(name)\"") }

            var host: String?
            var pathMatch: Route.PathMatch = .prefix("/")
            var methods: [String] = []
            if let m = map["match"]?.value,
                let match = r.mapping(m, r.join(path, "match"), allowed: ["host", "path_prefix", "path", "methods"])
            {
                let mp = r.join(path, "match")
                if let h = match["host"]?.value { host = r.string(h, r.join(mp, "host"))?.lowercased() }
                if match["path_prefix"] != nil, match["path"] != nil {
                    r.fail(m, mp, "give either path_prefix or path, not both")
                }
                if let p = match["path_prefix"]?.value, let s = urlPath(p, r.join(mp, "path_prefix")) { pathMatch = .prefix(s) }
                if let p = match["path"]?.value, let s = urlPath(p, r.join(mp, "path")) { pathMatch = .exact(s) }
                if let ms = match["methods"]?.value, let list = r.sequence(ms, r.join(mp, "methods")) {
                    for (j, mnode) in list.enumerated() {
                        guard let method = r.string(mnode, r.join(r.join(mp, "methods"), j)) else { continue }
                        if method.isEmpty || !method.allSatisfy({ Self.methodChars.contains($0) }) {
                            r.fail(mnode, r.join(r.join(mp, "methods"), j), "invalid method \"\(method)\" (expected upper-case letters such as GET)")
                        } else {
                            methods.append(method)
                        }
                    }
                }
            }

            var upstreamIndex = 0
            if let u = map["upstream"]?.value, let uname = r.string(u, r.join(path, "upstream")) {
                if let index = upstreams.firstIndex(where: { $0.name == uname }) {
                    upstreamIndex = index
                } else {
                    r.fail(u, r.join(path, "upstream"), "unknown upstream \"\(uname)\"")
                }
            } else if map["upstream"] == nil {
                r.fail(item, r.join(path, "upstream"), "required")
            }

            var route = Route(name: name, host: host, path: pathMatch, methods: methods, upstream: upstreamIndex)
            if let n = map["strip_prefix"]?.value, let v = r.bool(n, r.join(path, "strip_prefix")) { route.stripPrefix = v }
            if let n = map["host_header"]?.value, let v = r.string(n, r.join(path, "host_header")) {
                switch v {
                case "passthrough": route.hostHeader = .passthrough
                case "target": route.hostHeader = .target
                default:
                    if v.isEmpty || v.contains(where: { $0 == " " || $0 == "\r" || $0 == "\n" || $0 == "\t" }) {
                        r.fail(n, r.join(path, "host_header"), "expected passthrough, target or a host name")
                    } else {
                        route.hostHeader = .fixed(v)
                    }
                }
            }
            if let n = map["max_body_bytes"]?.value, let v = r.size(n, r.join(path, "max_body_bytes")) { route.maxBodyBytes = v }
            if let n = map["policy"]?.value { route.policy = policyModule(n, r.join(path, "policy")) }
            if let n = map["plugins"]?.value { route.plugins = decodePluginList(n, r.join(path, "plugins")) }
            route.budget = scripts.budget
            if let n = map["budget"]?.value {
                if map["policy"] == nil, map["plugins"] == nil { r.fail(n, r.join(path, "budget"), "a budget needs a policy or plugins") }
                route.budget = decodeBudget(n, r.join(path, "budget"), base: scripts.budget)
            }
            if let n = map["retry_non_idempotent"]?.value, let v = r.bool(n, r.join(path, "retry_non_idempotent")) { route.retryNonIdempotent = v }
            if let n = map["upgrade"]?.value, let items = r.sequence(n, r.join(path, "upgrade")) {
                for (i, item) in items.enumerated() {
                    let itemPath = r.join(r.join(path, "upgrade"), i)
                    guard let name = r.string(item, itemPath) else { continue }
                    let lower = name.lowercased()
                    if lower == "h2c" {
                        r.fail(item, itemPath, "h2c upgrades are refused (HTTP/2 to clients is a listener setting)")
                    } else if lower.isEmpty || !lower.utf8.allSatisfy({ $0 > 0x20 && $0 < 0x7f && $0 != UInt8(ascii: ",") && $0 != UInt8(ascii: "/") }) {
                        r.fail(item, itemPath, "expected a protocol name such as websocket, got \(JSONValue.quoted(name))")
                    } else if !route.upgrade.contains(lower) {
                        route.upgrade.append(lower)
                    }
                }
            }
            if let n = map["rate_limit_failure"]?.value, let v = r.string(n, r.join(path, "rate_limit_failure")) {
                if let mode = RateLimitFailure(rawValue: v) {
                    route.rateLimitFailure = mode
                } else {
                    r.fail(n, r.join(path, "rate_limit_failure"), "expected open (let requests through) or closed (answer 429)")
                }
            }
            out.append(route)
        }
        return out
    }

    private func urlPath(_ node: YAMLNode, _ path: String) -> String? {
        guard let s = reader.string(node, path) else { return nil }
        guard s.hasPrefix("/"), !s.contains(where: { $0 == " " || $0 == "?" || $0 == "#" || !$0.isASCII }) else {
            reader.fail(node, path, "expected a path starting with / (no spaces, query or fragment), got \"\(s)\"")
            return nil
        }
        return s
    }
}
