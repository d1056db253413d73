import YAML

extension ConfigDecoder {
    /// Balancing, retries and passive health of an upstream.
    func decodeResilience(_ map: [String: (key: YAMLNode, value: YAMLNode)], _ path: String, into upstream: inout Upstream) {
        let r = reader
        if let n = map["balancer"]?.value, let v = r.string(n, r.join(path, "balancer")) {
            switch v {
            case "round_robin": upstream.balancer = .roundRobin
            case "least_request": upstream.balancer = .leastRequest
            case "hash":
                guard let k = map["hash_key"]?.value, let text = r.string(k, r.join(path, "hash_key")) else {
                    r.fail(n, r.join(path, "hash_key"), "required with balancer: hash (header:NAME, cookie:NAME or client_ip)")
                    break
                }
                if text == "client_ip" {
                    upstream.balancer = .hash(.clientIP)
                } else if text.hasPrefix("header:"), text.count > 7 {
                    upstream.balancer = .hash(.header(String(text.dropFirst(7))))
                } else if text.hasPrefix("cookie:"), text.count > 7 {
                    upstream.balancer = .hash(.cookie(String(text.dropFirst(7))))
                } else {
                    r.fail(k, r.join(path, "hash_key"), "expected header:NAME, cookie:NAME or client_ip")
                }
            default:
                r.fail(n, r.join(path, "balancer"), "expected round_robin, least_request or hash")
            }
        }
        if map["hash_key"] != nil, map["balancer"] == nil {
            r.fail(map["hash_key"]!.value, r.join(path, "hash_key"), "needs balancer: hash")
        }
        if let n = map["retries"]?.value, let v = r.int(n, r.join(path, "retries"), range: 0...10) { upstream.retries = v }
        if let n = map["try_timeout"]?.value, let v = positive(n, r.join(path, "try_timeout")) { upstream.tryTimeout = v }
        if let b = map["retry_budget"]?.value, let budget = r.mapping(b, r.join(path, "retry_budget"), allowed: ["ratio", "min"]) {
            let bp = r.join(path, "retry_budget")
            if let n = budget["ratio"]?.value, let text = r.string(n, r.join(bp, "ratio")) {
                if let v = Double(text), v >= 0, v <= 1 { upstream.retryBudget = v } else { r.fail(n, r.join(bp, "ratio"), "expected a number from 0 to 1") }
            }
            if let n = budget["min"]?.value, let v = r.int(n, r.join(bp, "min"), range: 0...10_000) { upstream.retryBudgetMin = v }
        }
        if let h = map["passive_health"]?.value,
            let health = r.mapping(h, r.join(path, "passive_health"), allowed: ["failures", "eject", "max_eject"])
        {
            let hp = r.join(path, "passive_health")
            if let n = health["failures"]?.value, let v = r.int(n, r.join(hp, "failures"), range: 1...1000) { upstream.ejectAfter = v }
            if let n = health["eject"]?.value, let v = positive(n, r.join(hp, "eject")) { upstream.ejectTime = v }
            if let n = health["max_eject"]?.value, let v = positive(n, r.join(hp, "max_eject")) { upstream.maxEjectTime = v }
        }
        if let c = map["health_check"]?.value,
            let check = r.mapping(c, r.join(path, "health_check"), allowed: ["path", "interval", "timeout", "expect", "healthy", "unhealthy"])
        {
            let cp = r.join(path, "health_check")
            var hc = Upstream.HealthCheck()
            if let n = check["path"]?.value, let v = r.string(n, r.join(cp, "path")) {
                if v.hasPrefix("/"), !v.contains(where: { $0 == " " || $0 == "\r" || $0 == "\n" }) { hc.path = v } else { r.fail(n, r.join(cp, "path"), "expected a path starting with /") }
            }
            if let n = check["interval"]?.value, let v = positive(n, r.join(cp, "interval")) { hc.interval = v }
            if let n = check["timeout"]?.value, let v = positive(n, r.join(cp, "timeout")) { hc.timeout = v }
            if let n = check["expect"]?.value, let v = r.string(n, r.join(cp, "expect")) {
                let parts = v.split(separator: "-").compactMap { Int($0) }
                if parts.count == 1, (100...599).contains(parts[0]) {
                    hc.expect = parts[0]...parts[0]
                } else if parts.count == 2, (100...599).contains(parts[0]), parts[0] <= parts[1], parts[1] <= 599 {
                    hc.expect = parts[0]...parts[1]
                } else {
                    r.fail(n, r.join(cp, "expect"), "expected a status (200) or a range (200-399)")
                }
            }
            if let n = check["healthy"]?.value, let v = r.int(n, r.join(cp, "healthy"), range: 1...100) { hc.healthy = v }
            if let n = check["unhealthy"]?.value, let v = r.int(n, r.join(cp, "unhealthy"), range: 1...100) { hc.unhealthy = v }
            upstream.healthCheck = hc
        }
        if let c = map["circuit_breaker"]?.value,
            let breaker = r.mapping(c, r.join(path, "circuit_breaker"), allowed: ["failures", "ratio", "min_requests", "window", "open", "probes"])
        {
            let cp = r.join(path, "circuit_breaker")
            if let n = breaker["failures"]?.value, let v = r.int(n, r.join(cp, "failures"), range: 1...10_000) { upstream.breaker.failures = v }
            if let n = breaker["ratio"]?.value, let text = r.string(n, r.join(cp, "ratio")) {
                if let v = Double(text), v > 0, v <= 1 { upstream.breaker.ratio = v } else { r.fail(n, r.join(cp, "ratio"), "expected a number above 0, at most 1") }
            }
            if let n = breaker["min_requests"]?.value, let v = r.int(n, r.join(cp, "min_requests"), range: 1...1_000_000) {
                upstream.breaker.minRequests = v
            }
            if let n = breaker["window"]?.value, let v = positive(n, r.join(cp, "window")) { upstream.breaker.window = v }
            if let n = breaker["open"]?.value, let v = positive(n, r.join(cp, "open")) { upstream.breaker.openTime = v }
            if let n = breaker["probes"]?.value, let v = r.int(n, r.join(cp, "probes"), range: 1...1000) { upstream.breaker.probes = v }
        }
    }
}
