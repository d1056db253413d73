#if canImport(Glibc)
import Glibc
#endif
import Config
import Logging
import NIOConcurrencyHelpers

/// Operational logs as JSON lines (`log_format: json`): `time`, `level`, `message`, `label`,
/// then the metadata (`request_id`, `trace_id`, `route`, `target`, `script`, `line`, ...) as
/// fields of their own, for a log shipper to index. Values under names that carry secrets
/// (`authorization`, `token`, `password`, ...) are written as `[redacted]`, whoever logs them.
///
/// Not on the per-request path: the gateway logs state changes and rate-limited warnings.
/// Each line goes out in one `write` so lines from the worker threads never interleave.
public struct JSONLogHandler: LogHandler {
    public var metadata: Logger.Metadata = [:]
    public var logLevel: Logger.Level = .info
    private let label: String
    private let output: @Sendable (String) -> Void

    /// Writes to standard error, or hands each line (without its newline) to `output`.
    public init(label: String, output: (@Sendable (String) -> Void)? = nil) {
        self.label = label
        self.output = output ?? { line in
            let bytes = Array((line + "\n").utf8)
            JSONLogHandler.lock.withLock { _ = bytes.withUnsafeBytes { write(2, $0.baseAddress, $0.count) } }
        }
    }

    private static let lock = NIOLock()

    public subscript(metadataKey key: String) -> Logger.Metadata.Value? {
        get { metadata[key] }
        set { metadata[key] = newValue }
    }

    /// Field names whose values are never written (compared lower case, `-` as `_`).
    static let secretNames: Set<String> = [
        "authorization", "proxy_authorization", "cookie", "set_cookie", "token", "access_token", "refresh_token", "id_token",
        "password", "passwd", "secret", "client_secret", "api_key", "apikey", "x_api_key", "private_key", "credentials",
    ]

    static func isSecret(_ name: String) -> Bool {
        secretNames.contains(name.lowercased().replacing("-", with: "_"))
    }

    public func log(event: LogEvent) {
        var line = "{\"time\":"
        line += JSONValue.quoted(Self.timestamp())
        line += ",\"level\":" + JSONValue.quoted(event.level.rawValue)
        line += ",\"message\":" + JSONValue.quoted(event.message.description)
        line += ",\"label\":" + JSONValue.quoted(label)
        let fields = metadata.merging(event.metadata ?? [:]) { _, new in new }
        for name in fields.keys.sorted() where !["time", "level", "message", "label"].contains(name) {
            line += "," + JSONValue.quoted(name) + ":"
            line += Self.isSecret(name) ? "\"[redacted]\"" : JSONValue.quoted("\(fields[name]!)")
        }
        line += "}"
        output(line)
    }

    /// RFC 3339 in UTC with milliseconds, as the access log writes it.
    static func timestamp() -> String {
        var ts = timespec()
        clock_gettime(CLOCK_REALTIME, &ts)
        var t = ts.tv_sec
        var parts = tm()
        gmtime_r(&t, &parts)
        func two(_ v: Int32) -> String { v < 10 ? "0\(v)" : "\(v)" }
        let ms = Int(ts.tv_nsec / 1_000_000)
        let millis = ms < 10 ? "00\(ms)" : ms < 100 ? "0\(ms)" : "\(ms)"
        return "\(parts.tm_year + 1900)-\(two(parts.tm_mon + 1))-\(two(parts.tm_mday))T\(two(parts.tm_hour)):\(two(parts.tm_min)):\(two(parts.tm_sec)).\(millis)Z"
    }
}
