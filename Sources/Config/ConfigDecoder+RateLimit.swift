import YAML

extension ConfigDecoder {
    func decodeRedis(_ node: YAMLNode) -> [RedisServer] {
        let r = reader
        guard case .mapping(let mapping) = node else {
            r.fail(node, "redis", "expected a mapping of Redis server names to their settings")
            return []
        }
        var out: [RedisServer] = []
        for (key, value) in mapping {
            guard let name = r.string(key, "redis") else { continue }
            let path = r.join("redis", name)
            if name == "local" {
                r.fail(key, path, "\"local\" names the gateway's own store; choose another name")
                continue
            }
            guard
                let map = r.mapping(
                    value, path,
                    allowed: [
                        "address", "cluster", "sentinel", "tls", "username", "password", "password_file", "database",
                        "connect_timeout", "command_timeout", "key_prefix", "circuit",
                    ])
            else { continue }
            let given = ["address", "cluster", "sentinel"].filter { map[$0] != nil }
            guard given.count == 1 else {
                r.fail(
                    value, path,
                    given.isEmpty
                        ? "give address (host:port), cluster (seed addresses) or sentinel ({addresses, master})"
                        : "give one of address, cluster and sentinel, not \(given.joined(separator: " and "))")
                continue
            }
            var server: RedisServer
            if let a = map["address"]?.value {
                guard let address = r.address(a, r.join(path, "address")) else { continue }
                server = RedisServer(name: name, address: address)
            } else if let c = map["cluster"]?.value {
                guard let seeds = addresses(c, r.join(path, "cluster")) else { continue }
                server = RedisServer(name: name, address: seeds[0])
                server.topology = .cluster(seeds: seeds)
            } else {
                guard let s = map["sentinel"]?.value, let sentinel = decodeSentinel(s, r.join(path, "sentinel")) else { continue }
                server = RedisServer(name: name, address: sentinel.addresses[0])
                server.topology = .sentinel(sentinel)
            }
            if let n = map["tls"]?.value { server.tls = decodeUpstreamTLS(n, r.join(path, "tls")) }
            if let n = map["username"]?.value { server.username = r.string(n, r.join(path, "username")) }
            if let n = map["password"]?.value, let v = r.string(n, r.join(path, "password")), !v.isEmpty { server.password = v }
            if let n = map["password_file"]?.value { server.passwordFile = r.string(n, r.join(path, "password_file")) }
            if map["password"] != nil, map["password_file"] != nil {
                r.fail(value, path, "give password or password_file, not both")
            }
            if let n = map["database"]?.value, let v = r.int(n, r.join(path, "database"), range: 0...1_000_000) {
                if case .cluster = server.topology, v != 0 {
                    r.fail(n, r.join(path, "database"), "a Redis Cluster has only database 0")
                } else {
                    server.database = v
                }
            }
            if let n = map["connect_timeout"]?.value, let v = positive(n, r.join(path, "connect_timeout")) { server.connectTimeout = v }
            if let n = map["command_timeout"]?.value, let v = positive(n, r.join(path, "command_timeout")) { server.commandTimeout = v }
            if let n = map["key_prefix"]?.value, let v = r.string(n, r.join(path, "key_prefix")) {
                if v.contains(where: { $0 == "{" || $0 == "}" }) {
                    r.fail(n, r.join(path, "key_prefix"), "must not contain { or }: the bucket key is the hash tag")
                } else {
                    server.keyPrefix = v
                }
            }
            if let c = map["circuit"]?.value, let circuit = r.mapping(c, r.join(path, "circuit"), allowed: ["failures", "open", "max_open"]) {
                let cp = r.join(path, "circuit")
                if let n = circuit["failures"]?.value, let v = r.int(n, r.join(cp, "failures"), range: 1...1000) { server.circuitFailures = v }
                if let n = circuit["open"]?.value, let v = positive(n, r.join(cp, "open")) { server.circuitOpen = v }
                if let n = circuit["max_open"]?.value, let v = positive(n, r.join(cp, "max_open")) { server.circuitMaxOpen = v }
                if server.circuitMaxOpen < server.circuitOpen { r.fail(c, r.join(cp, "max_open"), "must be at least open") }
            }
            out.append(server)
        }
        return out
    }

    /// A non-empty list of `host:port` (or one, as a string).
    private func addresses(_ node: YAMLNode, _ path: String) -> [SocketAddressSpec]? {
        let r = reader
        if case .scalar = node { return r.address(node, path).map { [$0] } }
        guard let items = r.sequence(node, path) else { return nil }
        guard !items.isEmpty else {
            r.fail(node, path, "expected at least one host:port")
            return nil
        }
        var out: [SocketAddressSpec] = []
        for (i, item) in items.enumerated() {
            guard let a = r.address(item, "\(path)[\(i)]") else { return nil }
            out.append(a)
        }
        return out
    }

    /// `sentinel: {addresses, master, username, password, recheck}`.
    private func decodeSentinel(_ node: YAMLNode, _ path: String) -> RedisSentinel? {
        let r = reader
        guard let map = r.mapping(node, path, allowed: ["addresses", "master", "username", "password", "recheck"]) else { return nil }
        guard let a = map["addresses"]?.value else {
            r.fail(node, r.join(path, "addresses"), "required (the sentinels' host:port)")
            return nil
        }
        guard let m = map["master"]?.value else {
            r.fail(node, r.join(path, "master"), "required (the name the sentinels monitor)")
            return nil
        }
        guard let addresses = addresses(a, r.join(path, "addresses")), let master = r.string(m, r.join(path, "master")) else { return nil }
        guard !master.isEmpty else {
            r.fail(m, r.join(path, "master"), "must not be empty")
            return nil
        }
        var sentinel = RedisSentinel(addresses: addresses, master: master)
        if let n = map["username"]?.value { sentinel.username = r.string(n, r.join(path, "username")) }
        if let n = map["password"]?.value, let v = r.string(n, r.join(path, "password")), !v.isEmpty { sentinel.password = v }
        if let n = map["recheck"]?.value, let v = positive(n, r.join(path, "recheck")) { sentinel.recheck = v }
        return sentinel
    }

    func decodeRateLimit(_ node: YAMLNode?, redis: [RedisServer]) -> RateLimitConfig {
        let r = reader
        var config = RateLimitConfig()
        if redis.count == 1 { config.defaultStore = redis[0].name }
        guard let node, let map = r.mapping(node, "rate_limit", allowed: ["default_store", "local_keys"]) else {
            return config
        }
        if let n = map["default_store"]?.value, let v = r.string(n, "rate_limit.default_store") {
            if v == "local" || redis.contains(where: { $0.name == v }) {
                config.defaultStore = v
            } else {
                r.fail(n, "rate_limit.default_store", "unknown store \"\(v)\" (expected local or a server under redis)")
            }
        }
        if let n = map["local_keys"]?.value, let v = r.int(n, "rate_limit.local_keys", range: 1024...(1 << 28)) { config.localKeys = v }
        return config
    }
}
