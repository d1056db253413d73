import YAML

/// An OAuth2 token introspection endpoint (RFC 7662), asked with the gateway's client
/// credentials.
public struct IntrospectionServer: Sendable, Equatable {
    public var name: String
    public var endpoint: HTTPEndpoint
    public var clientID: String
    /// Never logged. Usually `${VAR}` or `client_secret_file`.
    public var clientSecret: String?
    public var clientSecretFile: String?
    /// Longest a request waits for the answer; then `oauth2.introspect` returns `nil, "timeout"`.
    /// Default 500 ms.
    public var timeout: Duration = .milliseconds(500)
    /// Answers kept per worker. Default 10,000.
    public var cacheEntries = 10_000
    /// An active token's answer is kept until its `exp`, at most this long. Default 5 min.
    public var maxCache: Duration = .seconds(300)
    /// An inactive token's answer is kept this long (a flood of bad tokens costs one call
    /// each per this period). Default 5 s.
    public var negativeCache: Duration = .seconds(5)

    public init(name: String, endpoint: HTTPEndpoint, clientID: String) {
        self.name = name
        self.endpoint = endpoint
        self.clientID = clientID
    }
}

extension ConfigDecoder {
    func decodeIntrospection(_ node: YAMLNode) -> [IntrospectionServer] {
        let r = reader
        guard case .mapping(let mapping) = node else {
            r.fail(node, "introspection", "expected a mapping of endpoint names to their settings")
            return []
        }
        var out: [IntrospectionServer] = []
        for (key, value) in mapping {
            guard let name = r.string(key, "introspection") else { continue }
            let path = r.join("introspection", name)
            guard
                let map = r.mapping(
                    value, path,
                    allowed: [
                        "url", "ca_file", "client_id", "client_secret", "client_secret_file", "timeout", "cache_entries", "max_cache",
                        "negative_cache",
                    ])
            else { continue }
            guard let u = map["url"]?.value, let text = r.string(u, r.join(path, "url")) else {
                r.fail(value, r.join(path, "url"), "required (http://host[:port]/path)")
                continue
            }
            guard var endpoint = HTTPEndpoint(parsing: text) else {
                r.fail(u, r.join(path, "url"), "expected https://host[:port]/path (or http:// on a trusted network)")
                continue
            }
            if let n = map["ca_file"]?.value, let file = r.string(n, r.join(path, "ca_file")) {
                if endpoint.tls { endpoint.caFile = file } else { r.fail(n, r.join(path, "ca_file"), "needs an https url") }
            }
            guard let idNode = map["client_id"]?.value, let id = r.string(idNode, r.join(path, "client_id")) else {
                r.fail(value, r.join(path, "client_id"), "required")
                continue
            }
            var server = IntrospectionServer(name: name, endpoint: endpoint, clientID: id)
            if let n = map["client_secret"]?.value { server.clientSecret = r.string(n, r.join(path, "client_secret")) }
            if let n = map["client_secret_file"]?.value { server.clientSecretFile = r.string(n, r.join(path, "client_secret_file")) }
            if (map["client_secret"] == nil) == (map["client_secret_file"] == nil) {
                r.fail(value, path, "give client_secret or client_secret_file (one of them)")
            }
            if let n = map["timeout"]?.value, let v = positive(n, r.join(path, "timeout")) { server.timeout = v }
            if let n = map["cache_entries"]?.value, let v = r.int(n, r.join(path, "cache_entries"), range: 0...10_000_000) { server.cacheEntries = v }
            if let n = map["max_cache"]?.value, let v = r.duration(n, r.join(path, "max_cache")) { server.maxCache = v }
            if let n = map["negative_cache"]?.value, let v = r.duration(n, r.join(path, "negative_cache")) { server.negativeCache = v }
            out.append(server)
        }
        return out
    }
}
