import CJOSE
import Config
import FoundationEssentials

/// The admin API's bearer tokens, from `admin.token_file`: one `id sha256-hex` per line (`#`
/// starts a comment). Only digests are kept, on disk and in memory; `moongate admin-token`
/// makes a token and its line. The id names the writer in the versions list and the log.
public struct AdminTokens: Sendable {
    private let entries: [(id: String, digest: [UInt8])]

    /// No tokens: the API is open (only allowed on a loopback admin address).
    public static let open = AdminTokens(entries: [])
    public var isOpen: Bool { entries.isEmpty }

    private init(entries: [(id: String, digest: [UInt8])]) {
        self.entries = entries
    }

    /// Reads `file`; a file that names no token is an error (it would lock everyone out, or,
    /// read as "no tokens", let everyone in).
    public static func load(file: String) throws(ConfigError) -> AdminTokens {
        guard let data = FileManager.default.contents(atPath: file) else {
            throw ConfigError([ConfigDiagnostic(file: file, line: 0, path: "admin.token_file", message: "cannot read the token file")])
        }
        var entries: [(id: String, digest: [UInt8])] = []
        var problems: [ConfigDiagnostic] = []
        for (i, line) in String(decoding: data, as: UTF8.self).split(separator: "\n", omittingEmptySubsequences: false).enumerated() {
            let fields = line.split(whereSeparator: { $0 == " " || $0 == "\t" || $0 == "\r" })
            if fields.isEmpty || fields[0].hasPrefix("#") { continue }
            guard fields.count == 2, let digest = APIKeySet.digest(hex: String(fields[1])) else {
                problems.append(ConfigDiagnostic(file: file, line: i + 1, path: "", message: "expected \"id sha256-hex\" (moongate admin-token ID makes one)"))
                continue
            }
            entries.append((String(fields[0]), digest))
        }
        if problems.isEmpty, entries.isEmpty {
            problems.append(ConfigDiagnostic(file: file, line: 0, path: "admin.token_file", message: "no tokens in the file"))
        }
        if !problems.isEmpty { throw ConfigError(problems) }
        return AdminTokens(entries: entries)
    }

    /// The id of the token `Authorization: Bearer <token>` presents, or nil. Compares against
    /// every digest with no early exit.
    public func identify(authorization: String?) -> String? {
        guard let authorization, authorization.count > 7, authorization.prefix(7).lowercased() == "bearer " else { return nil }
        let token = Array(authorization.dropFirst(7).trimmingSpaces().utf8)
        guard !token.isEmpty else { return nil }
        var digest = [UInt8](repeating: 0, count: 32)
        mg_sha256(token, token.count, &digest)
        var found: String?
        for entry in entries where mg_digest_equal(entry.digest, digest) == 1 { found = entry.id }
        return found
    }

    /// A new random token (32 bytes, base64url) and the line the token file takes for it.
    public static func make(id: String) -> (token: String, line: String) {
        var bytes = [UInt8](repeating: 0, count: 32)
        var generator = SystemRandomNumberGenerator()
        for i in bytes.indices { bytes[i] = generator.next() }
        let token = Data(bytes).base64EncodedString().replacing("+", with: "-")
            .replacing("/", with: "_").replacing("=", with: "")
        let utf8 = Array(token.utf8)
        var digest = [UInt8](repeating: 0, count: 32)
        mg_sha256(utf8, utf8.count, &digest)
        let hex = digest.map { String($0, radix: 16).count == 1 ? "0" + String($0, radix: 16) : String($0, radix: 16) }.joined()
        return (token, "\(id) \(hex)")
    }
}
