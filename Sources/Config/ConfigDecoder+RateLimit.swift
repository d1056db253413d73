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
                        "address", "username", "password", "password_file", "database", "connect_timeout", "command_timeout",
                        "key_prefix", "circuit",
                    ])
            else { continue }
            guard let a = map["address"]?.value else {
                r.fail(value, r.join(path, "address"), "required (host:port)")
                continue
            }
            guard let address = r.address(a, r.join(path, "address")) else { continue }
            var server = RedisServer(name: name, address: address)
            if let n = map["username"]?.value { server.username = r.string(n, r.join(path, "username")) }
            if let n = map["password"]?.value, let v = r.string(n, r.join(path, "password")), !v.isEmpty { server.password = v }
            if let n = map["password_file"]?.value { server.passwordFile = r.string(n, r.join(path, "password_file")) }
            if map["password"] != nil, map["password_file"] != nil {
                r.fail(value, path, "give password or password_file, not both")
            }
            if let n = map["database"]?.value, let v = r.int(n, r.join(path, "database"), range: 0...1_000_000) { server.database = v }
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
