import YAML

extension ConfigDecoder {
    /// `store:` — where routes, upstreams, keysets, API keys, global plugins and scripts come from.
    func decodeStore(_ node: YAMLNode) -> StoreConfig {
        let r = reader
        var store = StoreConfig()
        guard let map = r.mapping(node, "store", allowed: ["kind", "url", "password_file", "cache", "poll"]) else { return store }
        if let n = map["kind"]?.value, let text = r.string(n, "store.kind") {
            if let kind = StoreConfig.Kind(rawValue: text) { store.kind = kind } else { r.fail(n, "store.kind", "expected file or postgres, got \"\(text)\"") }
        }
        if let n = map["url"]?.value, let text = r.string(n, "store.url") {
            if let url = PostgresURL(parsing: text) {
                store.postgres = url
            } else {
                r.fail(n, "store.url", "expected postgres://user@host[:port]/database")
            }
        }
        if let n = map["password_file"]?.value, let file = r.string(n, "store.password_file") { store.passwordFile = file }
        if let n = map["cache"]?.value, let file = r.string(n, "store.cache") {
            if file.isEmpty { r.fail(n, "store.cache", "expected a file path") } else { store.cache = file }
        }
        if let n = map["poll"]?.value, let v = positive(n, "store.poll") { store.poll = v }
        switch store.kind {
        case .postgres:
            if map["url"] == nil { r.fail(node, "store.url", "required for a postgres store (postgres://user@host:5432/database)") }
        case .file:
            for key in ["url", "password_file", "cache"] where map[key] != nil {
                r.fail(map[key]?.key, "store.\(key)", "only for kind: postgres")
            }
        }
        return store
    }

    /// `admin:` — the admin listener and who may use its API.
    func decodeAdmin(_ node: YAMLNode) -> (address: SocketAddressSpec?, tokenFile: String?) {
        let r = reader
        guard let map = r.mapping(node, "admin", allowed: ["address", "token_file"]) else { return (nil, nil) }
        var address: SocketAddressSpec?
        if let a = map["address"]?.value { address = r.address(a, "admin.address") } else { r.fail(node, "admin.address", "required") }
        var tokenFile: String?
        if let n = map["token_file"]?.value, let file = r.string(n, "admin.token_file") {
            if file.isEmpty { r.fail(n, "admin.token_file", "expected a file path") } else { tokenFile = file }
        }
        if let address, tokenFile == nil, !address.isLoopback {
            r.fail(map["address"]?.value, "admin.token_file", "required when admin.address is not a loopback address (the admin API changes the configuration)")
        }
        return (address, tokenFile)
    }
}

extension SocketAddressSpec {
    /// Whether only this machine can reach the address: 127.0.0.0/8, ::1 or localhost.
    public var isLoopback: Bool {
        host == "localhost" || host == "::1" || host.hasPrefix("127.")
    }
}
