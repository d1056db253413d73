/// Where the dynamic part of the configuration (routes, upstreams, keysets, API keys, global plugins, scripts)
/// lives: this YAML file and its scripts directory, or a PostgreSQL database shared by a fleet.
public struct StoreConfig: Sendable, Equatable {
    public enum Kind: String, Sendable, Equatable { case file, postgres }

    public var kind: Kind = .file
    /// `store.url`: the database, for `postgres`.
    public var postgres: PostgresURL?
    /// `store.password_file`: the database password, read at start (better than in the URL).
    public var passwordFile: String?
    /// `store.cache`: the last configuration the store gave, written after each one applied; a
    /// gateway started while the store is down boots from it.
    public var cache: String?
    /// `store.poll`: how often the version is checked besides notifications (a lost `NOTIFY`
    /// is late by at most this). Default 5 s.
    public var poll: Duration = .seconds(5)

    public init() {}
}

/// `postgres://user[:password]@host[:port]/database`.
public struct PostgresURL: Sendable, Equatable, CustomStringConvertible {
    public var user: String
    public var password: String?
    public var host: String
    public var port: Int
    public var database: String

    public init(user: String, password: String? = nil, host: String, port: Int = 5432, database: String) {
        self.user = user
        self.password = password
        self.host = host
        self.port = port
        self.database = database
    }

    public init?(parsing text: String) {
        let scheme = text.hasPrefix("postgres://") ? "postgres://" : text.hasPrefix("postgresql://") ? "postgresql://" : nil
        guard let scheme else { return nil }
        var rest = Substring(text.dropFirst(scheme.count))
        if let query = rest.firstIndex(of: "?") { rest = rest[..<query] }
        guard let at = rest.lastIndex(of: "@"), let slash = rest[at...].firstIndex(of: "/") else { return nil }
        let credentials = rest[..<at]
        let hostPort = rest[rest.index(after: at)..<slash]
        let database = rest[rest.index(after: slash)...]
        guard !database.isEmpty, !database.contains("/") else { return nil }
        if let colon = credentials.firstIndex(of: ":") {
            user = Self.decode(credentials[..<colon])
            password = Self.decode(credentials[credentials.index(after: colon)...])
        } else {
            user = Self.decode(credentials)
        }
        guard !user.isEmpty, let address = SocketAddressSpec(parsing: hostPort.contains(":") && !hostPort.hasSuffix("]") ? String(hostPort) : "\(hostPort):5432"),
            !address.host.isEmpty
        else { return nil }
        host = address.host
        port = address.port
        self.database = Self.decode(database)
    }

    /// `%XX` escapes, as URLs carry them in user names and passwords.
    private static func decode(_ text: Substring) -> String {
        guard text.contains("%") else { return String(text) }
        var bytes: [UInt8] = []
        var i = text.utf8.startIndex
        let utf8 = text.utf8
        while i < utf8.endIndex {
            if utf8[i] == UInt8(ascii: "%"), let a = utf8.index(i, offsetBy: 1, limitedBy: utf8.endIndex), a < utf8.endIndex,
                let b = utf8.index(i, offsetBy: 2, limitedBy: utf8.endIndex), b < utf8.endIndex,
                let byte = UInt8(String(decoding: [utf8[a], utf8[b]], as: UTF8.self), radix: 16)
            {
                bytes.append(byte)
                i = utf8.index(i, offsetBy: 3)
            } else {
                bytes.append(utf8[i])
                i = utf8.index(after: i)
            }
        }
        return String(decoding: bytes, as: UTF8.self)
    }

    /// The URL without its password, for logs and `/status`.
    public var description: String { "postgres://\(user)@\(host.contains(":") ? "[\(host)]" : host):\(port)/\(database)" }
}
