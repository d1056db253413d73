/// One problem found in a configuration file, located by file, line and document path,
/// printed as `gateway.yaml:14 routes[2].upstream: unknown upstream "billing"`.
public struct ConfigDiagnostic: Sendable, Hashable, CustomStringConvertible {
    /// The file's name as given to the loader.
    public var file: String
    /// 1-based line, or 0 when the problem is about the file as a whole.
    public var line: Int
    /// Path in the document, such as `routes[2].upstream`; empty for the document root.
    public var path: String
    public var message: String
    /// The same place as an RFC 6901 JSON pointer (`/routes/2/upstream`), as the admin API
    /// reports it.
    public var pointer: String

    public init(file: String, line: Int, path: String, message: String, pointer: String? = nil) {
        self.file = file
        self.line = line
        self.path = path
        self.message = message
        self.pointer = pointer ?? Self.pointer(path: path)
    }

    /// A problem in a JSON document, located by pointer only.
    public init(pointer: String, message: String) {
        self.init(file: "", line: 0, path: "", message: message, pointer: pointer)
    }

    /// `routes[2].upstream` → `/routes/2/upstream`. Exact for paths the decoder builds (it
    /// records the pointer of each as it goes); this reading serves paths written by hand.
    static func pointer(path: String) -> String {
        guard !path.isEmpty else { return "" }
        var out = ""
        for part in path.split(separator: ".", omittingEmptySubsequences: false) {
            var rest = Substring(part)
            if let open = rest.firstIndex(of: "[") {
                out = JSONPointer.join(out, String(rest[..<open]))
                rest = rest[open...]
                while rest.hasPrefix("["), let close = rest.firstIndex(of: "]") {
                    out += "/" + rest[rest.index(after: rest.startIndex)..<close]
                    rest = rest[rest.index(after: close)...]
                }
            } else {
                out = JSONPointer.join(out, String(rest))
            }
        }
        return out
    }

    public var description: String {
        if file.isEmpty { return pointer.isEmpty ? message : "\(pointer): \(message)" }
        let location = line > 0 ? "\(file):\(line)" : file
        return path.isEmpty ? "\(location): \(message)" : "\(location) \(path): \(message)"
    }
}

/// A configuration that could not be loaded; carries every problem found, not just the first.
public struct ConfigError: Error, Sendable, CustomStringConvertible {
    public var diagnostics: [ConfigDiagnostic]

    public init(_ diagnostics: [ConfigDiagnostic]) {
        self.diagnostics = diagnostics
    }

    public var description: String {
        diagnostics.map(\.description).joined(separator: "\n")
    }
}
