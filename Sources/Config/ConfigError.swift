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

    public init(file: String, line: Int, path: String, message: String) {
        self.file = file
        self.line = line
        self.path = path
        self.message = message
    }

    public var description: String {
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
